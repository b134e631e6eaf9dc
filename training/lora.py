"""LoRA adapters with peft: which layers to adapt, wrapping a task model for training, and loading a trained adapter
on its base.

An adapter version's folder holds the adapter (adapter_model.safetensors + adapter_config.json, with the task head
as peft `modules_to_save`), the tokenizer, training_params.json, metrics.json and the card; never the base weights.
training_params.json's `adapter` says what it needs to be loaded again: its base (`hub:<id>` at a cached revision,
or a registered version `model:<name>:<v>`) and the config values the task set on the base's config (a
classifier's labels, a pad token id), which the base's own config.json does not have.

The functions used at submit time (`default_targets` aside) are torch-free: the API checks `target_modules`
against the tensor names in a safetensors header, without loading a model.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import NotReady, UserError, ValidationFailed
from core.tasks import TASKS
from training.params_file import read_training_params
from training.spec import LoraMethod

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Model types peft 0.21's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING has no entry for, with the attention
# projections it uses for their relatives (BERT's query/value): DistilBERT names them q_lin/v_lin.
EXTRA_TARGETS: dict[str, list[str]] = {"distilbert": ["q_lin", "v_lin"]}
# Per task, from its descriptor (core/tasks.py):
# - `peft_task_type`: peft's task type. None (a plain PeftModel, which passes every input through) for the encoder
#   tasks: peft 0.21's PeftModelForSequenceClassification and PeftModelForQuestionAnswering drop `token_type_ids`,
#   so a BERT would train on segment ids other than the ones it is served with (a QA model's question/context ids).
#   Their heads are named in modules_to_save instead of being found by the task type.
# - `lora_head`: the task's head is new (or task-specific) and is trained whole and saved with the adapter. The LM
#   heads of summarization and generation are tied to the input embeddings and the vocabulary does not change: the
#   base's head is the right one, and saving it would store the largest matrix of a small model in every adapter.
# Config keys that differ between a base and its task model without being the task's settings.
_CONFIG_NOISE = frozenset({"architectures", "_name_or_path", "transformers_version", "dtype", "torch_dtype",
                           "_commit_hash", "_attn_implementation_autoset", "output_attentions",
                           "output_hidden_states", "return_dict"})
MAX_LISTED = 40


def default_targets(model_type: str | None) -> list[str] | None:
    """The layers peft adapts by default for an architecture (its own table), or None when it has none."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults

    if model_type is None:
        return None
    found = peft_defaults.get(model_type) or EXTRA_TARGETS.get(model_type)
    return list(found) if found else None


def matches(module: str, target: str) -> bool:
    """peft's rule for a list of target names: the module's path is the target or ends with `.target`."""
    return module == target or module.endswith("." + target)


def unknown_targets(targets: Iterable[str], modules: Iterable[str]) -> list[str]:
    modules = list(modules)
    return [t for t in targets if not any(matches(m, t) for m in modules)]


def leaf_names(modules: Iterable[str]) -> list[str]:
    """The distinct last parts of module paths: the names a user gives as target_modules."""
    return sorted({m.rsplit(".", 1)[-1] for m in modules})


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def targets_message(unknown: list[str], *, model: str, adaptable: Iterable[str]) -> str:
    return (f"method.target_modules: {', '.join(repr(u) for u in unknown)} "
            f"{'is not a layer' if len(unknown) == 1 else 'are not layers'} of {model} that LoRA can adapt; "
            f"its layers are: {_listed(leaf_names(adaptable))}")


# --- torch-free checks at submit time ----------------------------------------------------------------------------

def _header_tensors(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            return {}
        (length,) = struct.unpack("<Q", raw)
        if length > 100 * 1024 * 1024:
            return {}
        header = json.loads(f.read(length))
    return {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def weight_modules(folder: Path) -> list[str] | None:
    """The modules of a saved model that LoRA can adapt (those with a 2-D `weight`: linear, Conv1D and embedding
    layers), read from its safetensors header(s) without loading anything; None when the folder holds no
    safetensors weights (not cached, or an adapter)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    files: list[Path] = []
    found: set[str] = set()
    try:
        if single.is_file():
            files = [single]
        elif index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map") or {}
            # Shards beside the index only (a name is a plain file name): an index cannot point the read elsewhere.
            files = [folder / name for name in sorted(set(weight_map.values()))
                     if isinstance(name, str) and Path(name).name == name and (folder / name).is_file()]
        if not files:
            return None
        for path in files:
            for key, entry in _header_tensors(path).items():
                module, _, leaf = key.rpartition(".")
                if leaf == "weight" and module and len(entry.get("shape") or []) == 2:
                    found.add(module)
    except (OSError, ValueError, AttributeError, TypeError):  # a damaged index or header: the worker checks instead
        return None
    return sorted(found)


def check_targets_at_submit(method: LoraMethod, *, folder: Path | None, model: str) -> None:
    """A 422 for target_modules the base model does not have, when its weights are on this machine to tell."""
    if method.target_modules is None or folder is None:
        return
    modules = weight_modules(folder)
    if modules is None:
        return  # the worker checks against the loaded model
    unknown = unknown_targets(method.target_modules, modules)
    if unknown:
        raise ValidationFailed(targets_message(unknown, model=model, adaptable=modules))


def is_adapter_dir(folder: Path | str) -> bool:
    """A version folder trained with `method: lora` (an adapter that needs its base to load)."""
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG).is_file() and isinstance(read_training_params(folder).get("adapter"), dict)


# --- training ----------------------------------------------------------------------------------------------------

def head_modules(model: PreTrainedModel) -> list[str]:
    """The task head: the model's top-level children with weights other than its backbone (BERT's `classifier`,
    DistilBERT's `pre_classifier` and `classifier`, GPT-2's `score`, a QA model's `qa_outputs`)."""
    backbone = getattr(model, "base_model_prefix", "")
    return [name for name, child in model.named_children()
            if name != backbone and next(child.parameters(), None) is not None]


def adaptable_modules(model: PreTrainedModel, *, exclude: Iterable[str] = ()) -> list[str]:
    import torch
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)
    skip = tuple(exclude)
    return [name for name, module in model.named_modules()
            if name and isinstance(module, kinds) and not any(name == s or name.startswith(s + ".") for s in skip)]


def wrap(model: PreTrainedModel, *, method: LoraMethod, task: str, model_name: str,
         on_event: Callable[[str, str, dict[str, Any]], None]) -> tuple[Any, dict[str, Any]]:
    """The task model with a fresh LoRA adapter (peft), and the adapter's effective settings."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    model_type = getattr(model.config, "model_type", None)
    info = TASKS[task]
    heads = head_modules(model) if info.lora_head else []
    adaptable = adaptable_modules(model, exclude=heads)
    targets = method.target_modules or default_targets(model_type)
    if not targets:
        raise UserError(f"there is no default LoRA target_modules for model type '{model_type}' ({model_name}); "
                        f"give method.target_modules, from its layers: {_listed(leaf_names(adaptable))}")
    unknown = unknown_targets(targets, adaptable)
    if unknown:
        raise UserError(targets_message(unknown, model=model_name, adaptable=adaptable))
    # GPT-2's Conv1D layers store their weight transposed: peft must be told (it would warn and fix it itself).
    fan_in_fan_out = any(isinstance(module, Conv1D) for name, module in model.named_modules()
                         if any(matches(name, t) for t in targets))
    config = LoraConfig(task_type=info.peft_task_type, r=method.r, lora_alpha=method.alpha,
                        lora_dropout=method.dropout, target_modules=list(targets), modules_to_save=list(heads) or None,
                        fan_in_fan_out=fan_in_fan_out)
    peft_model = get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    settings = {"type": "lora", "r": method.r, "alpha": method.alpha, "dropout": method.dropout,
                "target_modules": list(targets), "modules_to_save": heads}
    on_event("log", f"LoRA: r={method.r}, alpha={method.alpha}, dropout={method.dropout:g}, target_modules "
                    f"{', '.join(targets)}" + (f", head {', '.join(heads)} trained whole" if heads else "")
                    + f"; {trainable:,} of {total:,} parameters trainable",
             {**settings, "trainable_parameters": trainable, "total_parameters": total,
              "default_targets": method.target_modules is None})
    return peft_model, settings


def config_overrides(task_config: dict[str, Any], base_config: dict[str, Any]) -> dict[str, Any]:
    """The config values a task set on its base model's config (labels, pad token id, …): what loading the
    adapter later has to set again."""
    missing = object()
    return {k: v for k, v in task_config.items()
            if k not in _CONFIG_NOISE and base_config.get(k, missing) != v}


def save_extras(model: Any, *, out_dir: Path, base_source: str, generation_config: Any) -> dict[str, Any]:
    """What an adapter folder needs beside peft's files: the generation config the task set up (a seq2seq or
    causal LM), and the config values to set on the base when loading (returned, for training_params.json)."""
    from transformers import AutoConfig

    task_config = json.loads(model.config.to_json_string(use_diff=False))
    base_config = json.loads(AutoConfig.from_pretrained(base_source, trust_remote_code=False)
                             .to_json_string(use_diff=False))
    if generation_config is not None:
        generation_config.save_pretrained(str(out_dir))
    return config_overrides(task_config, base_config)


# --- loading an adapter on its base ------------------------------------------------------------------------------

def base_source(adapter_dir: Path) -> tuple[str, str | None]:
    """(what `from_pretrained` loads the base from, the revision to pin) for an adapter folder."""
    from registry.store import version_dir_beside

    base = (read_training_params(adapter_dir).get("adapter") or {}).get("base") or {}
    kind, _, rest = str(base.get("resolved") or "").partition(":")
    if kind == "hub" and rest:
        revision = base.get("revision")
        return rest, revision if isinstance(revision, str) and revision else None
    if kind == "model" and rest:
        name, _, version = rest.rpartition(":")
        folder = version_dir_beside(adapter_dir, name, int(version))
        if not folder.is_dir():
            raise UserError(f"the adapter's base version {name}:{version} is gone")
        return str(folder), None
    raise UserError("the adapter's training_params.json does not say which base model it was trained on")


def typed_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """training_params.json's `model_config` as `from_pretrained` takes it."""
    out = dict(overrides)
    if isinstance(out.get("id2label"), dict):  # JSON made the ids strings
        out["id2label"] = {int(k): v for k, v in out["id2label"].items()}
    return out


def require_safetensors(adapter_dir: Path) -> None:
    """peft falls back to a pickled `adapter_model.bin` when the safetensors file is missing: never load one."""
    if not (Path(adapter_dir) / ADAPTER_WEIGHTS).is_file():
        raise NotReady(f"the adapter version's files are incomplete: no {ADAPTER_WEIGHTS} (only safetensors adapter "
                       "weights are loaded)")


def load_adapter(auto_class: Any, adapter_dir: Path, *, merge: bool = True, adapter_name: str = "default",
                 **kwargs: Any) -> Any:
    """The task model of an adapter folder: its base loaded with the task's config values, the adapter (and
    head) on top; merged into plain weights unless `merge` is false (then a peft model, the adapter named
    `adapter_name`)."""
    from peft import PeftModel

    from training.modeling import load_model

    require_safetensors(adapter_dir)
    adapter = read_training_params(adapter_dir).get("adapter") or {}
    source, revision = base_source(adapter_dir)
    extra: dict[str, Any] = {"revision": revision} if revision else {}
    if "id2label" in (adapter.get("model_config") or {}):
        # A classifier base of another label count (its head re-created for this adapter): the base's head is
        # replaced by the adapter's own (modules_to_save), so its shape may differ.
        extra["ignore_mismatched_sizes"] = True
    base = load_model(auto_class, source, **typed_overrides(adapter.get("model_config") or {}), **extra, **kwargs)
    if (adapter_dir / "generation_config.json").is_file():
        from transformers import GenerationConfig

        base.generation_config = GenerationConfig.from_pretrained(str(adapter_dir))
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=adapter_name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"could not load the LoRA adapter on its base: {type(exc).__name__}: {exc}") from exc
    return model.merge_and_unload() if merge else model
