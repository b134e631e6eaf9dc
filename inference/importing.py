"""Whether an unpacked model folder can be registered and served at once, and what it needs to be.

Checked without loading any weights: safetensors files with sound headers (and no pickle anywhere), a
`config.json` that names a head this service serves (the task given must match it), no remote code, a
tokenizer that loads, and a `training_params.json` whose serving values the predictors can use — defaulted
from the config when the archive has none.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ValidationFailed, scrub_paths
from core.tasks import TASKS

PARAMS_FILE = "training_params.json"  # training/params_file.py FILE: what the predictors read
VOCAB_FILES = ("vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
MAX_JSON_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 100 * 1024 * 1024  # a safetensors JSON header; real ones are KBs to a few MBs
MAX_SERVING_INT = 1_000_000
MAX_METRICS = 200


@dataclass
class Checked:
    task: str
    config: dict[str, Any]
    training_params: dict[str, Any]
    metrics: dict[str, float]
    has_card: bool
    base_model: str | None
    labels: list[str] = field(default_factory=list)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        value = self.training_params.get("hyperparameters")
        return value if isinstance(value, dict) else {}

    @property
    def license(self) -> str:
        value = self.training_params.get("license")
        return value if isinstance(value, str) and 0 < len(value) <= 64 else "other"


def _read_json(path: Path, what: str, *, limit: int = MAX_JSON_BYTES) -> Any:
    if path.stat().st_size > limit:
        raise ValidationFailed(f"{what} is larger than {limit} bytes")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"{what} is not valid JSON: {str(exc)[:200]}") from exc


def check_safetensors(path: Path, shown: str) -> None:
    """A safetensors file: an 8-byte header length, a JSON header, tensors that fill the rest exactly."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or length > min(MAX_HEADER_BYTES, size - 8):
            raise ValidationFailed(f"'{shown}' is not a safetensors file (its header length is wrong)")
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValidationFailed(f"'{shown}' is not a safetensors file (its header is not JSON)") from exc
    if not isinstance(header, dict):
        raise ValidationFailed(f"'{shown}' is not a safetensors file (its header is not an object)")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise ValidationFailed(f"'{shown}' is not a safetensors file (tensor {key[:100]!r} has bad offsets)")
        end = max(end, offsets[1])
    if 8 + length + end != size:
        raise ValidationFailed(f"'{shown}' is truncated or padded: its tensors do not fill the file")


def _task_of(config: dict[str, Any], given: str | None) -> str:
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures) or not architectures:
        raise ValidationFailed("config.json names no architectures, so the model's head is unknown; save the "
                               "model with save_pretrained from an AutoModelFor… class")
    encoder_decoder = bool(config.get("is_encoder_decoder"))
    # The tasks whose predictor loads one of these heads (TaskInfo.heads). Vision, speech and multimodal models have
    # ...ForConditionalGeneration heads too: summarization is text seq2seq (an encoder-decoder), generation a decoder
    # only.
    skipped = "decoder" if encoder_decoder else "encoder-decoder"
    heads = {info.name for info in TASKS.values() if info.architecture != skipped
             and any(arch.endswith(suffix) for arch in architectures for suffix in info.heads)}
    shown = ", ".join(a[:100] for a in architectures[:5])
    if given is not None:
        if given not in heads:
            served = f"a {' / '.join(sorted(heads))} head" if heads else "no head ftserve serves"
            raise ValidationFailed(f"task '{given}' does not match the model: config.architectures is {shown}, "
                                   f"{served}")
        return given
    if len(heads) != 1:
        raise ValidationFailed(f"cannot tell the task from config.architectures ({shown}); heads ftserve serves "
                               f"end in {', '.join(_head_suffixes())}: give the form field 'task'")
    return heads.pop()


def _head_suffixes() -> list[str]:
    return list(dict.fromkeys(suffix for info in TASKS.values() for suffix in info.heads))


def default_serving(task: str, config: dict[str, Any]) -> dict[str, Any]:
    """What the predictors read from `training_params.json` (see training/tasks/*), from the config alone: each
    task's predictor says (`Predictor.imported_serving`)."""
    from inference.predictors import predictor_class

    return predictor_class(task).imported_serving(config)


_SERVING_TYPES: dict[str, type] = {"max_length": int, "doc_stride": int, "max_answer_length": int,
                                   "max_target_length": int, "block_size": int, "prefix": str, "labels": list}


def _check_params(params: Any, task: str, defaults: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise ValidationFailed(f"{PARAMS_FILE} must be a JSON object")
    if "task" in params and params["task"] != task:
        raise ValidationFailed(f"{PARAMS_FILE} says task {str(params['task'])[:50]!r}, but the model is served as "
                               f"'{task}'")
    if params.get("adapter") is not None:  # a full model's training_params.json says "adapter": null
        # It would make the version a LoRA adapter served on the base it names (training/lora.py base_source), with
        # no check that the importer may use that base: any owner's private version, by name.
        raise ValidationFailed(f"{PARAMS_FILE} 'adapter' marks a LoRA adapter version, which only a LoRA job "
                               "makes; import a full model (an adapter version's archive with ?merged=true is one)")
    serving = params.get("serving", {})
    if not isinstance(serving, dict):
        raise ValidationFailed(f"{PARAMS_FILE} 'serving' must be an object")
    for key, value in serving.items():
        kind = _SERVING_TYPES.get(key)
        if kind is None:
            continue  # a value no predictor reads
        if kind is int and (not isinstance(value, int) or isinstance(value, bool)
                            or not 1 <= value <= MAX_SERVING_INT):
            raise ValidationFailed(f"{PARAMS_FILE} serving.{key} must be an integer in 1..{MAX_SERVING_INT}")
        if kind is str and (not isinstance(value, str) or len(value) > 1000):
            raise ValidationFailed(f"{PARAMS_FILE} serving.{key} must be a string of at most 1000 characters")
        if kind is list and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise ValidationFailed(f"{PARAMS_FILE} serving.{key} must be a list of strings")
    if "hyperparameters" in params:
        if not isinstance(params["hyperparameters"], dict):
            raise ValidationFailed(f"{PARAMS_FILE} 'hyperparameters' must be an object")
        from pydantic import ValidationError

        from training.spec import PARAMS

        try:  # an evaluation of the version re-uses them: they must be a job's hyperparameters
            PARAMS[task].model_validate(params["hyperparameters"])
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValidationFailed(f"{PARAMS_FILE} 'hyperparameters' are not a {task} job's: "
                                   f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    return {**params, "task": task, "serving": {**defaults, **serving}}


def _metrics(root: Path) -> dict[str, float]:
    path = root / "metrics.json"
    if not path.is_file():
        return {}
    data = _read_json(path, "metrics.json", limit=64 * 1024)
    if (not isinstance(data, dict) or len(data) > MAX_METRICS or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v) for k, v in data.items())):
        raise ValidationFailed(f"metrics.json must be an object of at most {MAX_METRICS} metric names to "
                               "finite numbers")
    return {k: float(v) for k, v in data.items()}


def _tokenizer(root: Path) -> None:
    names = {p.name for p in root.iterdir()}
    if "tokenizer.json" not in names and not ("tokenizer_config.json" in names and names & set(VOCAB_FILES)):
        raise ValidationFailed("the archive has no tokenizer: it needs tokenizer.json, or tokenizer_config.json "
                               f"with a vocabulary ({', '.join(VOCAB_FILES)}); save it with "
                               "tokenizer.save_pretrained")
    if "tokenizer_config.json" in names:
        tok_config = _read_json(root / "tokenizer_config.json", "tokenizer_config.json")
        if isinstance(tok_config, dict) and tok_config.get("auto_map"):
            raise ValidationFailed("tokenizer_config.json needs remote code (auto_map); remote code is never run")
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(root), trust_remote_code=False)
    except Exception as exc:  # any failure of a user's files is theirs to fix: reported, not raised as ours
        raise ValidationFailed(f"the tokenizer does not load: {type(exc).__name__}: "
                               f"{scrub_paths(str(exc), root)[:300]}") from exc


def _base_model(config: dict[str, Any]) -> str | None:
    """The hub id the model came from, when its config says one (never a path on someone's disk)."""
    value = config.get("_name_or_path")
    if not isinstance(value, str) or not value:
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value


def check_model_folder(root: Path, *, task: str | None) -> Checked:
    """Raise ValidationFailed naming what is missing or wrong; else what the version will be."""
    if task is not None and task not in TASKS:
        raise ValidationFailed(f"task '{task[:50]}' is not one of {', '.join(TASKS)}")
    if not (root / "config.json").is_file():
        raise ValidationFailed("the archive has no config.json at its root (or in its one top folder)")
    weights = sorted(root.glob("*.safetensors"))
    if not weights:
        raise ValidationFailed("the archive has no safetensors weights (model.safetensors) next to config.json; "
                               "save with save_pretrained(..., safe_serialization=True)")
    for path in weights:
        check_safetensors(path, path.name)
    config = _read_json(root / "config.json", "config.json")
    if not isinstance(config, dict):
        raise ValidationFailed("config.json must be a JSON object")
    if config.get("auto_map"):
        raise ValidationFailed("config.json needs remote code (auto_map); remote code is never run")
    model_type = config.get("model_type")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING_NAMES:
        raise ValidationFailed(f"config.json model_type {str(model_type)[:50]!r} is not a model type this "
                               "transformers knows (remote code is never run)")
    chosen = _task_of(config, task)
    defaults = default_serving(chosen, config)  # a classifier's labels are checked here (config.id2label)
    labels = list(defaults.get("labels", []))
    _tokenizer(root)
    params_path = root / PARAMS_FILE
    given = _read_json(params_path, PARAMS_FILE) if params_path.is_file() else {"source": "imported"}
    params = _check_params(given, chosen, defaults)
    return Checked(task=chosen, config=config, training_params=params, metrics=_metrics(root),
                   has_card=(root / "README.md").is_file(), base_model=_base_model(config), labels=labels)


def write_params(root: Path, checked: Checked) -> None:
    """The effective training_params.json (the archive's, its serving values completed) beside the weights."""
    (root / PARAMS_FILE).write_text(json.dumps(checked.training_params, indent=2, sort_keys=True, default=str)
                                    + "\n")
