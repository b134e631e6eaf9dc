"""ONNX Runtime for the encoders of /classify and /answer on CPU (FTSERVE_ONNX=fp32|int8).

A loaded classification or question-answering predictor keeps its tokenizer and code; only its `model` is
swapped for an `OrtEncoder`, which is called exactly like the transformers model (`model(**features)` with the
padded torch tensors of `inference.batching.grouped_forward`) and answers with the same output class
(`.logits`, or `.start_logits` / `.end_logits`, as torch tensors).

Why ONNX Runtime: its fp32 graph gives PyTorch's scores (fused LayerNorm/GELU kernels, no Python between ops,
and sessions that run two batches at once; see `session`), and its
int8 graph with per-channel weight scales keeps the accuracy that torch's per-tensor dynamic int8 loses: on the
bench's MiniLM classifier -0.11 points through /classify where torch's int8 loses 1.95 (bench/serve_bench.py).

The export is a derived artifact: never written into the version dir (immutable), but into
`<data_dir>/cache/<name>/<version>/onnx/<fingerprint>-<mode>/`, built in a temp dir and renamed into place, so a
crashed or concurrent export never leaves a half-written model where a load would read it. The fingerprint
covers the version's files (name, size, mtime, inode) and the versions of the libraries and of this recipe, so
an export is never reused for other weights or by another exporter. Exporting MiniLM takes seconds, which the
first load of each version pays once (FTSERVE_WARM_MODELS pays it at start).

Every export is checked against the torch model on inputs of other shapes than the traced ones (scores within
`EXPORT_TOLERANCE`): a graph that traced a shape or a branch as a constant would otherwise serve wrong scores
silently. A model that cannot be exported (or fails that check) is served by torch, with a warning in the log.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("ftserve.inference")

ONNX_MODES = ("off", "fp32", "int8")
# Bumped whenever the export or quantization recipe changes, so older exports are not reused.
RECIPE = "2"  # 2: weights quantized to 7 bits (reduce_range)
EXPORT_TOLERANCE = 1e-3
# Batches a model runs at once: on 2 cores, two single-threaded batches beat one batch on two threads (session()).
# Both lanes run on one session, whose runs share its pool (`threads - LANES` threads besides the callers): on more
# cores, one request alone still spreads over most of them. Measured on 2 cores only.
LANES = 2
# Inputs a predictor may pass; an export covers those its tokenizer produces and its model accepts.
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class ExportFailed(RuntimeError):
    """The model could not be exported or its export does not reproduce its scores."""


class OrtEncoder:
    """An ONNX Runtime session behind the call signature of a transformers encoder model."""

    def __init__(self, session: Any, *, task: str, config: Any, path: Path) -> None:
        self.session = session
        self.config = config  # what a predictor may read (id2label) after the swap
        self.path = path
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = list(outputs(task))
        self._output_class = _output_class(task)

    def __call__(self, **features: Any) -> Any:
        import torch

        missing = [name for name in self.input_names if name not in features]
        if missing:
            raise KeyError(f"the ONNX model {self.path} needs {missing}; the predictor passed {sorted(features)}")
        # int64 as the graph was traced; the tokenizer's tensors already are, so this copies nothing.
        feed = {name: features[name].to(torch.int64).numpy() for name in self.input_names}
        values = self.session.run(self.output_names, feed)
        return self._output_class(**{n: torch.from_numpy(v) for n, v in zip(self.output_names, values, strict=True)})


def _predictor(task: str) -> Any:
    from inference.predictors import predictor_class

    return predictor_class(task)


def outputs(task: str) -> tuple[str, ...]:
    """The outputs an export of a `task` model gives: its predictor's `onnx_outputs`; none for the tasks whose
    predictors run on torch only (summarization and generation)."""
    return tuple(_predictor(task).onnx_outputs)


def _output_class(task: str) -> Any:
    from transformers import modeling_outputs

    return getattr(modeling_outputs, _predictor(task).onnx_output_class)


def use_onnx(predictor: Any, *, task: str, path: str, mode: str, data_dir: Path, threads: int) -> bool:
    """Swap `predictor.model` for an ONNX Runtime session of it in `mode` ("fp32" or "int8"); True when swapped,
    False for tasks other than the encoders'.

    Exports (or reuses the cached export) under the version's derived dir (`ArtifactStore.derived_dir`). A model
    that cannot be exported stays on torch (False) and the reason is logged as a warning."""
    from registry.store import ArtifactStore

    if mode not in ONNX_MODES or mode == "off":
        raise ValueError(f"ONNX mode must be one of {ONNX_MODES[1:]}, not {mode!r}")
    if not outputs(task):
        return False
    version_dir = Path(path)  # <data_dir>/models/<name>/<version>
    t0 = time.perf_counter()
    try:
        if not version_dir.name.isdigit():
            raise ExportFailed("not a version dir (<name>/<number>): no place to cache its export")
        target = ArtifactStore(data_dir).derived_dir(version_dir.parent.name, int(version_dir.name)) / "onnx"
        model_file = exported(predictor.model, predictor.tokenizer, task=task, version_dir=version_dir,
                              target=target, mode=mode)
    except (ExportFailed, OSError) as exc:  # OSError: the cache dir cannot be written (full, read-only)
        log.warning("FTSERVE_ONNX=%s: %s is served by torch: %s", mode, path, exc)
        return False
    lanes, per_run = lane_layout(threads)
    predictor.model = OrtEncoder(session(model_file, threads=per_run), task=task, config=predictor.model.config,
                                 path=model_file)
    predictor.lanes = lanes
    log.info("serving %s (%s) with ONNX Runtime %s from %s, %d batches at once, session threads %d (%.1f s)", path,
             task, mode, model_file, lanes, per_run, time.perf_counter() - t0)
    return True


def lane_layout(threads: int) -> tuple[int, int]:
    """(lanes, the session's intra-op threads) for a model served on `threads` cores. A run computes on its
    calling thread and the session's pool of `intra_op_num_threads - 1` threads, which concurrent runs share, so
    callers plus pool add up to `threads` (2 lanes and 1 thread on 2 cores: no pool)."""
    lanes = max(1, min(LANES, threads))
    return lanes, max(1, threads - lanes + 1)


def session(model_file: Path, *, threads: int = 1) -> Any:
    """A CPU session whose runs compute on `threads` threads (the calling one included), ops in sequence.

    The API runs `LANES` batches at once on one session (the predictor's `lanes`; `lane_layout`): on 2 cores,
    two single-threaded batches gave 1.08-1.29x the texts/s of one batch on two threads, and a single text took
    5.8 against 6.7 ms (bench/RESULTS.md; measured on 2 cores only). A run split over threads waits at every op
    for the slowest of them, and idles the other cores during the ops that do not split. A pool's threads sleep
    when their work runs out instead of spinning (ONNX Runtime's default): they share the cores with the API's
    event loop and the other lane (+0-18 % req/s at 64 connections with 2 threads and one lane, three runs
    interleaved with the default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise here
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


def fingerprint(version_dir: Path) -> str:
    """Changes with any file of the version dir and with any library that shapes the export."""
    import onnx
    import onnxruntime
    import torch
    import transformers

    h = hashlib.sha256()
    h.update(f"{RECIPE}|{torch.__version__}|{transformers.__version__}|{onnx.__version__}|"
             f"{onnxruntime.__version__}".encode())
    for f in sorted(version_dir.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"|{f.name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode())
    return h.hexdigest()[:16]


def exported(model: Any, tokenizer: Any, *, task: str, version_dir: Path, target: Path, mode: str) -> Path:
    """The cached `model.onnx` of this version in `mode`, made first when missing. int8 is quantized from the
    fp32 export, which is kept: switching modes, or serving both, then costs no second export."""
    key = fingerprint(version_dir)
    final = target / f"{key}-{mode}"
    model_file = final / "model.onnx"
    if model_file.is_file():
        return model_file
    source = None if mode == "fp32" else exported(model, tokenizer, task=task, version_dir=version_dir,
                                                  target=target, mode="fp32")
    target.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target))
    try:
        t0 = time.perf_counter()
        with _quiet_exporters():
            if source is None:
                export(model, tokenizer, task=task, out=work / "model.onnx")
            else:
                quantize(source, work / "model.onnx")
        try:
            os.replace(work, final)
        except OSError:
            if not model_file.is_file():  # else another process published the same export first: use it
                raise
        log.info("exported %s to ONNX %s in %.1f s", version_dir, mode, time.perf_counter() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _remove_stale(target, keep=key)
    return model_file


def _remove_stale(target: Path, *, keep: str) -> None:
    """Exports of this version by other library versions or recipes: never read again."""
    for d in target.iterdir():
        if d.is_dir() and not d.name.startswith(".tmp-") and not d.name.startswith(keep + "-"):
            shutil.rmtree(d, ignore_errors=True)


class _DropExporterChatter(logging.Filter):
    """onnxruntime's quantizer logs every tensor at INFO on the root logger (and advises a pre-processing step
    at WARNING): hundreds of lines per export in the API's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ("onnxruntime" in record.pathname and "quantization" in record.pathname
                    and record.levelno < logging.ERROR)


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Only errors from the exporter's and quantizer's loggers while exporting (their INFO lines are per node)."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    chatter = _DropExporterChatter()
    root = logging.getLogger()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    root.addFilter(chatter)  # a logger's filter sees only records logged through it: here, the quantizer's
    try:
        yield
    finally:
        root.removeFilter(chatter)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _example(tokenizer: Any, names: list[str], texts: list[str]) -> dict[str, Any]:
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return {k: enc[k] for k in names}


def export(model: Any, tokenizer: Any, *, task: str, out: Path) -> None:
    """torch.onnx.export (the dynamo exporter: the TorchScript one traces transformers 5's attention masks as
    constants) with dynamic batch and sequence axes, then checked against torch on other shapes."""
    import torch

    accepted = set(inspect.signature(model.forward).parameters)
    pairs = isinstance(_predictor(task).sample_input, tuple)  # question + context
    produced = set(tokenizer("a", "b") if pairs else tokenizer("a"))
    names = [n for n in _INPUTS if n in produced and n in accepted]
    if "input_ids" not in names:
        raise ExportFailed(f"its tokenizer gives {sorted(produced)}, not input_ids")
    names_out = outputs(task)

    class Outputs(torch.nn.Module):
        """The task's outputs as a tuple, so the graph's outputs are named and ordered."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Any:
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            result = self.inner(**{k: v for k, v in given.items() if v is not None})
            return tuple(result[o] for o in names_out)

    model = model.float().eval()
    # Two texts of different lengths, so the mask has padding and no axis is traced as 1.
    example = _example(tokenizer, names, ["a short one", "a somewhat longer text than the first one is"])
    dims = {n: {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO} for n in names}
    try:
        # The exporter's notices (deprecations inside torch.export) are about torch's code, not the model's.
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, UserWarning))
            program = torch.onnx.export(Outputs(model).eval(), (), kwargs=example, dynamic_shapes=dims,
                                        input_names=names, output_names=list(names_out), dynamo=True, verbose=False)
        program.save(str(out))
    except Exception as exc:  # any exporter failure means: serve this model with torch (logged by the caller)
        raise ExportFailed(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    check(model, tokenizer, task=task, names=names, model_file=out)


def check(model: Any, tokenizer: Any, *, task: str, names: list[str], model_file: Path) -> None:
    """The export's scores equal torch's (within EXPORT_TOLERANCE) on batches of other sizes and lengths."""
    import numpy as np
    import torch

    onnx_model = OrtEncoder(session(model_file), task=task, config=model.config, path=model_file)
    for texts in (["one"], ["three texts here", "of", "different lengths, longer than the traced ones were"]):
        batch = _example(tokenizer, names, texts)
        with torch.no_grad():
            want = model(**batch)
        got = onnx_model(**batch)
        for o in outputs(task):
            diff = float(np.abs(want[o].numpy() - got[o].numpy()).max())
            if diff > EXPORT_TOLERANCE:
                raise ExportFailed(f"the export's {o} differ from torch's by {diff:.2g} on a batch of "
                                   f"{tuple(batch['input_ids'].shape)}")


def quantize(fp32: Path, out: Path) -> None:
    """Dynamic int8 (activations quantized per batch at run time) with per-channel weight scales: one scale per
    output column keeps the small columns that one scale per matrix rounds away, which is where torch's
    per-tensor int8 loses its accuracy. Only the MatMul/Gemm with constant weights: the embeddings (Gather) stay
    fp32, as they cost no compute worth saving. Weights use 7 of the 8 bits (reduce_range): on x86 CPUs without
    VNNI (e.g. AMD Zen 2/3, Intel Skylake) ONNX Runtime's u8 x s8 kernel adds pairs of 8-bit products in 16 bits, which
    saturate with full-range weights (a tiny test encoder's scores moved by 0.025 there, against under 0.02 on a
    VNNI CPU); with 7-bit weights they cannot. The bench's MiniLM loses the same -0.11 points either way
    (bench/RESULTS.md, int8 recipes tried); the kernels are the same (only the weights' values change)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(fp32, out, per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"], extra_options={"MatMulConstBOnly": True})
    except Exception as exc:  # the quantizer's own errors: serve with torch (logged by the caller)
        raise ExportFailed(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc
