"""LoRA adapter versions served on shared bases: each base model is loaded once, the adapters of it are added to that
one copy (peft), and requests for different adapters of one base share forward passes.

- **A base** is what adapters must agree on to run on one loaded model: the task (the model class), the base
  weights (a hub id at a commit, or a registered version's folder), the config values the task set other than its
  labels, and the generation config. Adapters of one base with different label sets still share it: each adapter's
  head (peft `modules_to_save`) is a module of its own, shaped as its weights file says.
- **An adapter version's predictor** is the task's predictor with the version's own tokenizer, labels and serving
  settings, whose `model` is an `AdapterModel`: the shared base, run with this adapter on every row. A batch may
  hold inputs encoded by several adapter predictors of one base: it runs in one forward pass (one `generate` for
  summarization) with peft's `adapter_names`, each row with its own LoRA weights and head — except rows whose heads
  differ in width (other label counts), which peft cannot stack into one output, so the classification predictor
  runs one forward pass per head width. Adapters of one base share its tokenizer's vocabulary (they were trained
  on it), so any of their tokenizers pads a mixed batch.
- **One call at a time per base** (`SharedBase.lock`): peft selects a forward pass's adapters with hooks it
  registers on the base's layers for that call, which a concurrent call on the same layers would see.
- **Caching**: adapter versions have their own LRU cache (`FTSERVE_ADAPTER_CACHE_MB` of adapter weights,
  `FTSERVE_ADAPTER_CACHE_SIZE` versions); evicting one deletes it from its base, and a base goes with its last
  adapter. Full versions keep the model cache of inference/cache.py.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.cpus import size_torch_threads
from core.errors import NotReady, scrub_paths
from core.settings import Settings
from core.tasks import TASKS
from inference import metrics
from inference.cache import LOAD_LOCK, ModelCache

log = logging.getLogger("ftserve.inference")
MB = 1024 * 1024
# Config values a task sets that no forward pass reads (labels; the loss's problem type): adapters of one base that
# differ only there share it.
_LABEL_KEYS = frozenset({"id2label", "label2id", "problem_type", "finetuning_task"})
_GENERATION_NOISE = frozenset({"transformers_version", "_from_model_config"})
# The files of an adapter version's folder that are not its tokenizer's.
_NOT_TOKENIZER = frozenset({"adapter_model.safetensors", "adapter_config.json", "training_params.json", "metrics.json",
                            "README.md", "generation_config.json"})


@dataclass(frozen=True)
class BaseSpec:
    """What an adapter version needs of its base, read from its folder (training_params.json)."""

    task: str
    source: str  # what from_pretrained loads the base from: a hub id, or a registered version's folder
    revision: str | None
    key: str  # equal for every adapter version that can run on one loaded copy of the base
    label: str  # the base in logs and /metrics: "hub:<id>@<commit>/<task>" or "model:<name>:<v>/<task>"


def read_base_spec(task: str, folder: Path) -> BaseSpec:
    from training.lora import base_source
    from training.params_file import read_training_params

    adapter = read_training_params(folder).get("adapter") or {}
    source, revision = base_source(folder)
    forward_config = {k: v for k, v in (adapter.get("model_config") or {}).items() if k not in _LABEL_KEYS}
    generation_file = folder / "generation_config.json"
    generation = {k: v for k, v in json.loads(generation_file.read_text()).items() if k not in _GENERATION_NOISE} \
        if generation_file.is_file() else None
    key = json.dumps([task, source, revision, forward_config, generation], sort_keys=True, default=str)
    resolved = str((adapter.get("base") or {}).get("resolved") or source)
    label = f"{resolved}{'@' + revision[:12] if revision else ''}/{task}"
    return BaseSpec(task=task, source=source, revision=revision, key=key, label=label)


def _fit_heads(model: Any, folder: Path, name: str) -> list[Any]:
    """Give adapter `name` heads (peft `modules_to_save`) shaped as its weights file says, where they differ from the
    base's (a classifier of another label count): peft would copy the loaded head and fail to load into it. Returns
    the wrappers given a head (to take it back if loading fails)."""
    import torch
    from peft.utils.other import ModulesToSaveWrapper
    from safetensors import safe_open

    from training.lora import ADAPTER_WEIGHTS

    with safe_open(str(folder / ADAPTER_WEIGHTS), "pt") as f:
        shapes = {key: list(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 (not a dict)
    fitted = []
    for path, wrapper in model.named_modules():
        if not isinstance(wrapper, ModulesToSaveWrapper):
            continue
        head = copy.deepcopy(wrapper.original_module)
        changed = False
        for pname, param in list(head.named_parameters()):
            shape = shapes.get(f"{path}.{pname}")  # peft saves a head under its module path, without adapter name
            if shape is None or list(param.shape) == shape:
                continue
            owner, _, leaf = pname.rpartition(".")
            module = head.get_submodule(owner) if owner else head
            setattr(module, leaf, torch.nn.Parameter(torch.empty(shape, dtype=param.dtype, device=param.device),
                                                     requires_grad=False))
            if isinstance(module, torch.nn.Linear) and leaf == "weight":
                module.out_features, module.in_features = shape
            changed = True
        if changed:
            wrapper.modules_to_save[name] = head
            fitted.append(wrapper)
    return fitted


class SharedBase:
    """One loaded base (a peft model) and the adapters added to it; every call on it holds `lock`."""

    def __init__(self, spec: BaseSpec, model: Any, *, device: str, first: str) -> None:
        self.spec, self.model, self.device = spec, model, device
        self.lock = threading.RLock()
        self.adapters: set[str] = {first}
        self.tokenizers: dict[str, Any] = {}  # see `tokenizer`; changed under LOAD_LOCK (loads are one at a time)

    @classmethod
    def load(cls, spec: BaseSpec, folder: Path, *, name: str, device: str) -> SharedBase:
        """The base of the adapter in `folder`, with that adapter added as `name`."""
        import torch
        import transformers

        from training.lora import load_adapter

        auto_class = getattr(transformers, TASKS[spec.task].auto_class)
        model = load_adapter(auto_class, folder, merge=False, adapter_name=name).to(device).eval()
        if device == "cuda":  # as full versions are served: bf16 where the card has it, fp16 otherwise
            model = model.to(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return cls(spec, model, device=device, first=name)

    def add(self, name: str, folder: Path) -> None:
        from core.errors import UserError
        from training.lora import require_safetensors

        require_safetensors(folder)
        with self.lock:  # peft changes the base's layers: no call may run meanwhile
            fitted = _fit_heads(self.model, folder, name)
            try:
                self.model.load_adapter(str(folder), adapter_name=name)
            except Exception as exc:
                if name in self.model.peft_config:
                    self.model.delete_adapter(name)
                for wrapper in fitted:
                    wrapper.modules_to_save.pop(name, None)
                raise UserError(f"could not load the LoRA adapter on its base: {type(exc).__name__}: {exc}") from exc
            self.adapters.add(name)  # (peft leaves the model in eval mode: the adapter is loaded not trainable)

    def tokenizer(self, folder: Path, serving: dict[str, Any]) -> Any:
        """The tokenizer of the adapter version in `folder`, one object for the adapters of this base whose tokenizer
        files and serving settings are the same (they are copies of the base's): a fast tokenizer takes several MB
        and ~0.1 s to load, more than the adapter itself. Only equal settings share one: encoding sets a fast
        tokenizer's truncation state, which must not change while another thread encodes with it."""
        from training.modeling import load_tokenizer

        digest = hashlib.sha1(json.dumps(serving, sort_keys=True, default=str).encode())
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name not in _NOT_TOKENIZER:
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
        key = digest.hexdigest()
        found = self.tokenizers.get(key)
        if found is None:
            found = self.tokenizers[key] = load_tokenizer(str(folder))
        return found

    def remove(self, name: str) -> None:
        """Delete adapter `name` from the base (the last one stays: the base goes with it)."""
        with self.lock:
            if name not in self.adapters:
                return
            self.adapters.discard(name)
            if self.adapters:
                self.model.delete_adapter(name)

    def forward(self, adapter_names: list[str], **inputs: Any) -> Any:
        from peft import PeftModel

        with self.lock:
            # PeftModel's own forward, whatever the task's subclass: it passes every input through (the subclasses
            # for classification and QA drop token_type_ids; see training/lora.py) and sets each row's adapter.
            return PeftModel.forward(self.model, adapter_names=adapter_names, **inputs)

    def generate(self, adapter_names: list[str], **kwargs: Any) -> Any:
        from peft import PeftModel

        with self.lock:
            return PeftModel.generate(self.model, adapter_names=adapter_names, **kwargs)


class AdapterModel:
    """An adapter version's model as its predictor calls it (`model(**inputs)`, `model.generate(...)`): the shared
    base with this adapter on every row, or with `adapter_names` per row for a batch that mixes adapters of the
    base. `config` is the version's own (its labels); the decode loop reads `generation_config`."""

    def __init__(self, base: SharedBase, adapter_name: str, config: Any) -> None:
        self.base, self.adapter_name, self.config = base, adapter_name, config
        self.generation_config = getattr(base.model.get_base_model(), "generation_config", None)  # an LM's

    def _each(self, inputs: dict[str, Any]) -> list[str]:
        return [self.adapter_name] * int(inputs["input_ids"].shape[0])

    def __call__(self, *, adapter_names: list[str] | None = None, **inputs: Any) -> Any:
        return self.base.forward(adapter_names or self._each(inputs), **inputs)

    def generate(self, *, adapter_names: list[str] | None = None, **kwargs: Any) -> Any:
        return self.base.generate(adapter_names or self._each(kwargs), **kwargs)


def predict_on_base(items: Sequence[Any], params: dict[str, Any]) -> list[Any]:
    """A batch of encoded inputs for adapters of one base, each encoded by its adapter version's predictor
    (`Encoded.source`), in shared forward passes; one result per input. An input whose adapter was evicted since
    (its request gave up, so nothing kept it loaded) gets a NotReady of its own instead of failing the batch."""
    base: SharedBase = items[0].source.model.base
    with base.lock:  # an eviction waits for it: the adapters found here stay until the batch is done
        live = [i for i, item in enumerate(items)
                if item.source.model.base is base and item.source.model.adapter_name in base.adapters]
        results: list[Any] = [NotReady("the adapter was unloaded before its batch ran; retry")] * len(items)
        if live:
            runner = items[live[0]].source
            for index, result in zip(live, runner.predict([items[i] for i in live], **params), strict=True):
                results[index] = result
    return results


class ServingCache:
    """The loaded models of the API process: full versions in one ModelCache (FTSERVE_MODEL_CACHE_SIZE / _MB),
    adapter versions in another (FTSERVE_ADAPTER_CACHE_SIZE / _MB) on the shared bases. It answers ModelCache's calls;
    a version goes to one or the other by what its folder holds (an adapter's training_params.json)."""

    def __init__(self, settings: Settings, *, load_full: Callable[[str, str], Any],
                 on_unload: Callable[[Any], None] = lambda _predictor: None) -> None:
        # `on_unload` gets every predictor that leaves either cache (see ModelCache).
        self.full = ModelCache(capacity=settings.model_cache_size, loader=load_full,
                               max_bytes=settings.model_cache_mb * MB, on_unload=on_unload)
        self.adapters = ModelCache(capacity=settings.adapter_cache_size, loader=self._load_adapter,
                                   max_bytes=settings.adapter_cache_mb * MB, on_evict=self._unload_adapter,
                                   gauge=metrics.LOADED_ADAPTERS, on_unload=on_unload)
        self.torch_threads = settings.torch_threads
        self.bases: dict[str, SharedBase] = {}  # by BaseSpec.key; changed under LOAD_LOCK only
        self._specs: dict[str, BaseSpec | None] = {}  # version folder → its base (None: a full version)
        self._labels: dict[str, str] = {}  # base label → key: two kinds of one base get distinct labels
        self._specs_lock = threading.Lock()
        self._names = itertools.count(1)

    # -- routing ------------------------------------------------------------------------------------------------
    def spec(self, task: str, path: str) -> BaseSpec | None:
        """The base of the version in `path` when it is an adapter, else None (read once per version)."""
        if path in self._specs:
            return self._specs[path]
        from training.lora import is_adapter_dir

        spec: BaseSpec | None = None
        if is_adapter_dir(path):
            try:
                spec = read_base_spec(task, Path(path))
            except Exception as exc:  # its base is gone or its params are damaged: the version cannot be served
                raise NotReady(f"the LoRA adapter in this version cannot find its base: "
                               f"{scrub_paths(str(exc))[:300]}") from exc
        with self._specs_lock:
            if spec is not None:
                owner = self._labels.setdefault(spec.label, spec.key)
                if owner != spec.key:  # e.g. one base with two generation configs: two loaded copies, two labels
                    digest = hashlib.sha1(spec.key.encode()).hexdigest()[:8]
                    spec = BaseSpec(task=spec.task, source=spec.source, revision=spec.revision, key=spec.key,
                                    label=f"{spec.label}~{digest}")
            self._specs[path] = spec
        return spec

    def group(self, task: str, path: str) -> str | None:
        """The name of the batches a version's requests join when they are shared with other adapters of its base
        (the base's label), or None for a full version (its own batches)."""
        spec = self.spec(task, path)
        return None if spec is None else spec.label

    def _cache(self, task: str, path: str) -> ModelCache:
        return self.full if self.spec(task, path) is None else self.adapters

    # -- ModelCache's calls -------------------------------------------------------------------------------------
    def acquire(self, key: str, *, task: str, path: str, timeout: float = 300.0) -> Any:
        return self._cache(task, path).acquire(key, task=task, path=path, timeout=timeout)

    def release(self, key: str) -> None:
        # A key is one version, in one of the two caches; releasing it in the other is a no-op.
        self.full.release(key)
        self.adapters.release(key)

    @contextmanager
    def use(self, key: str, *, task: str, path: str, timeout: float = 300.0) -> Iterator[Any]:
        with self._cache(task, path).use(key, task=task, path=path, timeout=timeout) as predictor:
            yield predictor

    def get(self, key: str, *, task: str, path: str) -> Any:
        return self._cache(task, path).get(key, task=task, path=path)

    def discard(self, key: str) -> None:
        self.full.discard(key)
        self.adapters.discard(key)

    def loaded(self) -> list[str]:
        return self.full.loaded() + self.adapters.loaded()

    @property
    def load_seconds(self) -> dict[str, float]:
        return {**self.full.load_seconds, **self.adapters.load_seconds}

    # -- adapters on their bases --------------------------------------------------------------------------------
    def _load_adapter(self, task: str, path: str) -> Any:
        """An adapter version's predictor on its shared base, loading the base first if no adapter of it is loaded
        (ModelCache calls this under LOAD_LOCK: one load at a time)."""
        import torch

        from inference.predictors import predictor_class
        from training.lora import typed_overrides
        from training.params_file import read_training_params

        size_torch_threads(self.torch_threads)
        folder = Path(path)
        spec = self.spec(task, path)
        assert spec is not None  # routed here because it is an adapter
        name = f"adapter{next(self._names)}"  # peft's names are module names: no '.', unlike a model name
        base = self.bases.get(spec.key)
        if base is None:
            t0 = time.perf_counter()
            base = SharedBase.load(spec, folder, name=name, device="cuda" if torch.cuda.is_available() else "cpu")
            self.bases[spec.key] = base
            metrics.LOADED_BASES.set(len(self.bases))
            log.info("loaded the base %s in %.2fs", spec.label, time.perf_counter() - t0)
        else:
            base.add(name, folder)
        try:
            # The version's own config: the base's, with the values its task set (its labels).
            params = read_training_params(folder)
            config = copy.deepcopy(base.model.get_base_model().config)
            for key, value in typed_overrides((params.get("adapter") or {}).get("model_config") or {}).items():
                setattr(config, key, value)
            predictor = predictor_class(task)(folder, device=base.device, model=AdapterModel(base, name, config),
                                              tokenizer=base.tokenizer(folder, params.get("serving") or {}))
            predictor.warm_up()  # before request threads tokenize with it at once
        except BaseException:
            self._drop(base, name)
            raise
        return predictor

    def _unload_adapter(self, key: str, predictor: Any) -> None:
        with LOAD_LOCK:  # not while another adapter is being added to the same base
            self._drop(predictor.model.base, predictor.model.adapter_name)
        log.info("unloaded the adapter of %s from its base %s", key, predictor.model.base.spec.label)

    def _drop(self, base: SharedBase, name: str) -> None:
        base.remove(name)
        if not base.adapters and self.bases.get(base.spec.key) is base:
            del self.bases[base.spec.key]
            metrics.LOADED_BASES.set(len(self.bases))
            log.info("unloaded the base %s: none of its adapters is loaded", base.spec.label)


def write_merged(folder: Path, out: Path, *, task: str, name: str, version: int) -> Path:
    """A full version folder made of adapter version `name:version` (in `folder`), for `…/archive?merged=true`: its
    base with the adapter merged in (`merge_and_unload`; safetensors weights and config as `save_pretrained` writes
    them, the generation config of a seq2seq or causal LM), its tokenizer, training_params.json (`method` "full", the
    adapter in `merged_from`), metrics.json and a model card that names the base. Served or imported, it answers
    as the adapter version does. Returns `out`."""
    import shutil

    import transformers

    from training.lora import load_adapter
    from training.model_card import write_card
    from training.modeling import load_tokenizer
    from training.params_file import read_training_params, write_json

    auto_class = getattr(transformers, TASKS[task].auto_class)
    with LOAD_LOCK:  # from_pretrained patches process-global torch state while it builds (see inference/cache.py)
        model = load_adapter(auto_class, folder, merge=True)
    out.mkdir(parents=True)
    model.save_pretrained(str(out))
    del model
    load_tokenizer(str(folder)).save_pretrained(str(out))
    params = read_training_params(folder)
    adapter = params.pop("adapter", None) or {}
    params["method"] = "full"
    params["merged_from"] = {"version": f"{name}:{version}",
                             **{k: v for k, v in adapter.items() if k != "model_config"}}
    write_json(out / "training_params.json", params)
    metrics_file = folder / "metrics.json"
    metrics_ = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    if metrics_file.is_file():
        shutil.copy(metrics_file, out / "metrics.json")
    write_card(out, name=name, version=version, task=task, metrics=metrics_)
    return out
