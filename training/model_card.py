"""The model card (README.md) of every registered version, in the Hugging Face Hub's format.

The card is built with huggingface_hub's `ModelCard` / `ModelCardData` / `EvalResult`: its front matter (license,
base_model, datasets, language, tags, pipeline_tag, library_name, model-index) is what the Hub reads, and its text
has the sections listed in `HEADINGS`.

Everything the card shows is read from the version dir (training_params.json, written by training/runner.py at
training time) plus the version's metrics and any later evaluations, so the card can be rendered again whenever an
evaluation lands: `write_card(version_dir, name=…, version=…, task=…, metrics=…, evaluations=[…])`.
A version dir with few or no recorded facts (an older or imported version) still renders; missing facts say so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.tasks import TASKS, ByTask, TaskInfo
from training.params_file import read_training_params

if TYPE_CHECKING:
    from training.tasks.base import Task

PIPELINE_TAGS = ByTask(lambda task: task.pipeline_tag)
HEADINGS = (
    "Intended uses and limitations",
    "Training data",
    "Preprocessing",
    "Training hyperparameters",
    "Training results",
    "Evaluation results",
    "How to use",
    "Framework versions",
)
FILE = "README.md"
MAX_TABLE_ROWS = 200  # label counts and training results beyond this are summarized (a card stays readable)
_METRIC_NAMES = {
    "accuracy": "Accuracy", "f1_macro": "F1 (macro)", "exact_match": "Exact match", "f1": "F1",
    "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum",
    "perplexity": "Perplexity", "eval_loss": "Validation loss", "train_loss": "Training loss",
    "train_runtime_s": "Training runtime (s)",
}
_LIBRARY_NAMES = {"ftserve": "ftserve", "transformers": "Transformers", "torch": "PyTorch", "datasets": "Datasets",
                  "tokenizers": "Tokenizers"}
_LICENSE_SOURCES = {
    "job": "given with the training job",
    "setting": "the server's default (FTSERVE_DEFAULT_LICENSE)",
    "base_model": "inherited from the base model's card",
}
_PREPROCESSING_ORDER = ("tokenizer", "max_length", "truncation", "padding", "doc_stride", "max_answer_length",
                        "prefix", "prefix_note", "max_target_length", "block_size", "eos_handling", "packing")
_SKIPPED_EVAL_KEYS = ("_runtime", "_per_second", "epoch")


def _trainer(task: str) -> Task | None:
    """The task's training module, which words the card's task-specific parts (uses, context length, snippet)."""
    from training.tasks import get_task, implemented

    return get_task(task) if task in implemented() else None


def evaluation_rows(log_history: Iterable[dict[str, Any]],
                    derive: Callable[[dict[str, float]], dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """One row per evaluation of a Trainer's `state.log_history`: {"epoch", "step", "training_loss" (the last
    training loss logged up to that step, None if none was), "validation_loss", "metrics": {key: value}};
    `derive` adds metrics computed from an evaluation's (perplexity from eval_loss)."""
    rows: list[dict[str, Any]] = []
    training_loss: float | None = None
    for entry in log_history:
        evals = {k: v for k, v in entry.items() if k.startswith("eval_") and isinstance(v, (int, float))
                 and not k.endswith(_SKIPPED_EVAL_KEYS)}
        if not evals:
            if isinstance(entry.get("loss"), (int, float)):
                training_loss = float(entry["loss"])
            continue
        metrics = {k.removeprefix("eval_"): float(v) for k, v in evals.items() if k != "eval_loss"}
        loss = evals.get("eval_loss")
        if derive is not None and loss is not None:
            metrics.update(derive({"eval_loss": float(loss)}))
        rows.append({"epoch": _number(entry.get("epoch")), "step": _number(entry.get("step")),
                     "training_loss": training_loss, "validation_loss": None if loss is None else float(loss),
                     "metrics": metrics})
    return rows


def render_card(version_dir: Path, *, name: str, version: int, task: str, metrics: dict[str, Any],
                evaluations: Sequence[dict[str, Any]] = ()) -> str:
    """The model card of version `name:version` (a `task` model) whose files are in `version_dir`.

    - `metrics`: the version's metrics (metrics.json); every one is in the model-index, unrounded, as the
      result on its validation data.
    - `evaluations`: later evaluations, each `{"id": "eval_…", "dataset": {"id": "ds_…"} | {"hub": "org/name",
      "config": …, "split": …}, "dataset_sha256": "…" | None, "metrics": {key: value}}`; each is one more
      model-index result and one more table under "Evaluation results".

    What the training run recorded (base model, data, preprocessing, hyperparameters, per-evaluation log rows,
    library versions, license) is read from `version_dir`/training_params.json. Returns the README.md text.
    """
    from huggingface_hub import ModelCard

    params = read_training_params(version_dir)
    card = _Card(name=name, version=version, task=task, params=params, metrics=metrics,
                 evaluations=list(evaluations))
    content = f"---\n{card.data().to_yaml()}\n---\n\n{card.body()}"
    return str(ModelCard(content))  # parses it back: a card the Hub would reject never gets written


def write_card(version_dir: Path, *, name: str, version: int, task: str, metrics: dict[str, Any],
               evaluations: Sequence[dict[str, Any]] = ()) -> Path:
    """Render the card (see `render_card`) and replace `version_dir`/README.md with it (atomically)."""
    text = render_card(version_dir, name=name, version=version, task=task, metrics=metrics,
                       evaluations=evaluations)
    path = Path(version_dir) / FILE
    tmp = path.with_name(f".{FILE}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    text = value if isinstance(value, str) else json.dumps(value)
    return " ".join(text.split())[:300]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return _cell(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # A pipe splits a cell even inside a code span unless escaped (GFM tables).
    lines += ["| " + " | ".join((cell if isinstance(cell, str) else _fmt(cell)).replace("|", "\\|") for cell in row)
              + " |" for row in rows]
    return lines


def _code(value: Any) -> str:
    text = " ".join(str(value).split()).replace("`", "'")
    return f"`{text}`"


class _Card:
    def __init__(self, *, name: str, version: int, task: str, params: dict[str, Any], metrics: dict[str, Any],
                 evaluations: list[dict[str, Any]]) -> None:
        self.name, self.version, self.task = name, version, task
        # None for a task this ftserve does not know (a version of a task since removed): generic text then.
        self.info: TaskInfo | None = TASKS.get(task)
        self.trainer: Task | None = _trainer(task)
        self.ref = f"{name}:{version}"
        self.params, self.metrics, self.evaluations = params, metrics, evaluations
        self.data_info: dict[str, Any] = params.get("data") if isinstance(params.get("data"), dict) else {}
        self.serving: dict[str, Any] = params.get("serving") if isinstance(params.get("serving"), dict) else {}
        base = params.get("base") if isinstance(params.get("base"), dict) else {}
        resolved = str(params.get("base_model_resolved") or "")
        kind, _, rest = resolved.partition(":")
        self.base_hub: str | None = base.get("hub") or (rest if kind == "hub" else None)
        self.base_parent: str | None = base.get("parent") or (rest if kind == "model" else None)
        self.base_revision: str | None = base.get("revision")
        adapter = params.get("adapter")
        self.adapter: dict[str, Any] | None = adapter if params.get("method") == "lora" and isinstance(adapter, dict) \
            else None
        adapter_base = (self.adapter or {}).get("base") or {}
        # An adapter only runs on the very model it was trained on: the front matter names it only when that is a
        # hub model (a registered base version is not on the Hub).
        self.adapter_hub: str | None = adapter_base.get("hub") if isinstance(adapter_base.get("hub"), str) else None
        # A full model exported from an adapter version with its adapter merged in (`…/archive?merged=true`).
        merged = params.get("merged_from")
        self.merged_from: dict[str, Any] | None = merged if isinstance(merged, dict) else None
        self.license = str(params.get("license") or "other")
        self.license_source = str(params.get("license_source") or "unknown")
        language = params.get("language")
        self.languages: list[str] = [language] if isinstance(language, str) else list(language or [])

    # Front matter

    def data(self) -> Any:
        from huggingface_hub import ModelCardData

        tags = ["ftserve", self.task]
        if self.merged_from is not None:
            tags += ["lora", "merged"]
        if self.adapter is not None:
            tags += ["peft", "lora"] + ([f"base_model:adapter:{self.adapter_hub}"] if self.adapter_hub else [])
        return ModelCardData(
            license=self.license,
            base_model=self.adapter_hub if self.adapter is not None else self.base_hub,
            datasets=self._hub_datasets() or None,
            language=self.languages or None,
            tags=tags,
            pipeline_tag=PIPELINE_TAGS.get(self.task),
            library_name="peft" if self.adapter is not None else "transformers",
            model_name=self.name,
            eval_results=self._eval_results() or None,
        )

    def _hub_datasets(self) -> list[str]:
        found = []
        for prov in (self.data_info, self.data_info.get("validation") or {}):
            hub = prov.get("hub") if isinstance(prov, dict) else None
            if isinstance(hub, dict) and isinstance(hub.get("name"), str) and hub["name"] not in found:
                found.append(hub["name"])
        return found

    def _validation_dataset(self) -> dict[str, Any]:
        """EvalResult dataset fields for the validation data the version's metrics were measured on."""
        validation = self.data_info.get("validation")
        held_out = not isinstance(validation, dict)
        prov = self.data_info if held_out else validation
        ratio = (self.params.get("validation") or {}).get("split_ratio")
        hub = prov.get("hub") if isinstance(prov.get("hub"), dict) else None
        if hub is not None:
            split = str(hub.get("split") or "train")
            return {"dataset_type": hub.get("name"), "dataset_name": hub.get("name"),
                    "dataset_config": hub.get("config"),
                    "dataset_split": f"{split} (held-out {ratio * 100:g}%)" if held_out and ratio else split}
        dataset_id = str(prov.get("dataset_id") or "unknown")
        return {"dataset_type": dataset_id, "dataset_name": f"{prov.get('dataset_file') or dataset_id} (uploaded)",
                "dataset_split": f"held-out {ratio * 100:g}%" if held_out and ratio else "all rows",
                "dataset_revision": prov.get("dataset_sha256")}

    def _eval_results(self) -> list[Any]:
        from huggingface_hub import EvalResult

        task_type = PIPELINE_TAGS.get(self.task, self.task)
        results: list[Any] = []

        def add(dataset: dict[str, Any], metrics: dict[str, Any], task_name: str) -> None:
            key = (task_type, *(dataset.get(f"dataset_{k}") for k in ("type", "config", "split", "revision")))
            if key in {r.unique_identifier for r in results}:
                # Another result on the same data (a later evaluation): kept apart, or the Hub merges them.
                dataset = {**dataset, "dataset_split": f"{dataset.get('dataset_split')} ({task_name})"}
            for metric in sorted(metrics):
                value = metrics[metric]
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    results.append(EvalResult(task_type=task_type, task_name=task_name, metric_type=metric,
                                              metric_name=_METRIC_NAMES.get(metric, metric), metric_value=value,
                                              **dataset))

        add(self._validation_dataset(), self.metrics, "validation at the end of training")
        for evaluation in self.evaluations:
            add(self._evaluation_dataset(evaluation), evaluation.get("metrics") or {},
                f"evaluation {evaluation.get('id')}")
        return results

    @staticmethod
    def _evaluation_dataset(evaluation: dict[str, Any]) -> dict[str, Any]:
        ref = evaluation.get("dataset") or {}
        if ref.get("hub"):
            return {"dataset_type": ref["hub"], "dataset_name": ref["hub"], "dataset_config": ref.get("config"),
                    "dataset_split": ref.get("split") or "train",
                    "dataset_revision": evaluation.get("dataset_sha256")}
        dataset_id = str(ref.get("id") or "unknown")
        return {"dataset_type": dataset_id, "dataset_name": f"{dataset_id} (uploaded)", "dataset_split": "all rows",
                "dataset_revision": evaluation.get("dataset_sha256")}

    # Text

    def body(self) -> str:
        sections = {
            "Intended uses and limitations": self._uses(),
            "Training data": self._training_data(),
            "Preprocessing": self._preprocessing(),
            "Training hyperparameters": self._hyperparameters(),
            "Training results": self._training_results(),
            "Evaluation results": self._evaluation_results(),
            "How to use": self._how_to_use(),
            "Framework versions": self._frameworks(),
        }
        lines = [f"# {self.name} (version {self.version})", "", *self._intro(), ""]
        for heading in HEADINGS:
            lines += [f"## {heading}", "", *sections[heading], ""]
        return "\n".join(lines)

    def _intro(self) -> list[str]:
        task = self.info.title if self.info else self.task
        if self.base_parent:
            origin = f"the registered ftserve model `{self.base_parent}`"
            origin += f" (itself fine-tuned from [{self.base_hub}](https://huggingface.co/{self.base_hub}))" \
                if self.base_hub else ""
        elif self.base_hub:
            origin = f"[{self.base_hub}](https://huggingface.co/{self.base_hub})"
            origin += f" (revision `{self.base_revision}`)" if self.base_revision else ""
        else:
            origin = "an unrecorded base model"
        article = "An" if task[0] in "aeiou" else "A"
        if self.adapter is not None:
            lines = [f"{article} {task} **LoRA adapter**, `{self.ref}`, trained with ftserve (peft) on {origin}.", "",
                     *self._adapter_facts(), ""]
        elif self.merged_from is not None:
            merged = self.merged_from
            lines = [f"{article} {task} model: the LoRA adapter `{merged.get('version') or self.ref}`, trained with "
                     f"ftserve (peft) on {origin}, merged into its base's weights (`merge_and_unload`). This folder "
                     "holds every weight and loads as a plain `transformers` model; the adapter alone is the "
                     "version's own archive.", "",
                     f"- Rank `r`: {_code(merged.get('r'))}; `alpha`: {_code(merged.get('alpha'))}; adapted layers "
                     f"(`target_modules`): {', '.join(_code(t) for t in merged.get('target_modules') or [])}.", ""]
        else:
            lines = [f"{article} {task} model, `{self.ref}`, fine-tuned with ftserve from {origin}.", ""]
        if self.license_source == "unknown":
            lines.append("**License: unknown.** The job gave no license, the server sets no default and the base "
                         "model's card names none, so the front matter says `other`. Check the terms of the base "
                         "model and of the training data before sharing or using this model.")
        else:
            source = _LICENSE_SOURCES.get(self.license_source, self.license_source)
            lines.append(f"License: `{self.license}` ({source}).")
        return lines

    def _adapter_facts(self) -> list[str]:
        adapter = self.adapter or {}
        heads = adapter.get("modules_to_save") or []
        return [
            "This folder holds only the adapter's low-rank weights"
            + (f" and the task head ({', '.join(_code(h) for h in heads)}), trained whole" if heads else "")
            + " (`adapter_model.safetensors`, `adapter_config.json`), not the base model's weights: it runs on its "
              "base model, loaded first (see How to use).",
            "",
            f"- Rank `r`: {_code(adapter.get('r'))}; `alpha`: {_code(adapter.get('alpha'))} (updates scaled by "
            f"alpha/r); dropout: {_code(adapter.get('dropout'))}.",
            f"- Adapted layers (`target_modules`): {', '.join(_code(t) for t in adapter.get('target_modules') or [])}.",
        ]

    def _base_loading(self) -> list[str]:
        """Python lines that load an adapter's base model as `base` (with the config values the task set)."""
        adapter = self.adapter or {}
        base = adapter.get("base") or {}
        auto = self.info.auto_class if self.info else "AutoModel"
        if self.adapter_hub:
            where = json.dumps(self.adapter_hub) + (f", revision={json.dumps(base['revision'])}"
                                                    if base.get("revision") else "")
        else:
            version = str(base.get("version") or "name:version")
            where = json.dumps("./" + version.replace(":", "-")) + f"  # the registered base version {version}"
        overrides = adapter.get("model_config") or {}
        config = f", **{json.dumps(overrides)}" if overrides else ""
        first, _, comment = where.partition("  #")
        return [f"from transformers import {auto}, AutoTokenizer", "from peft import PeftModel", "",
                f'model_id = "./{self.name}-{self.version}"  # this folder, or the Hub repo it was pushed to',
                f"base = {auto}.from_pretrained({first}{config})" + (f"  #{comment}" if comment else ""),
                "model = PeftModel.from_pretrained(base, model_id).merge_and_unload()  # plain weights, as served",
                "tokenizer = AutoTokenizer.from_pretrained(model_id)"]

    def _context_length(self) -> str:
        if self.trainer is not None:
            return self.trainer.card_context_length(self.serving)
        max_length = self.serving.get("max_length")
        return "not recorded" if max_length is None else f"{max_length} tokens; longer inputs are truncated"

    def _uses(self) -> list[str]:
        labels = self.serving.get("labels")
        lines = [self.trainer.card_uses(self.serving) if self.trainer else f"A {self.task} model.", ""]
        if isinstance(labels, list):
            shown = ", ".join(_code(label) for label in labels[:MAX_TABLE_ROWS])
            more = f" and {len(labels) - MAX_TABLE_ROWS} more" if len(labels) > MAX_TABLE_ROWS else ""
            lines.append(f"- Label set: {shown}{more}.")
        lines.append("- Languages seen: " + (", ".join(_code(x) for x in self.languages) if self.languages else
                                             "not stated (the job gave no `language`)") + ".")
        lines.append(f"- Context length: {self._context_length()}.")
        rows = self.data_info.get("validation_rows")
        evaluated = f"{rows} validation rows" if rows is not None else "its validation data"
        lines.append(f"- Evaluated only on {evaluated} (see Training data)"
                     + (f" and {len(self.evaluations)} later evaluation(s)" if self.evaluations else "")
                     + ". It was not evaluated on other domains, languages, or for bias, fairness, robustness to "
                       "adversarial input or calibration of its scores.")
        return lines

    def _source(self, prov: dict[str, Any]) -> str:
        hub = prov.get("hub")
        if isinstance(hub, dict):
            config = f", config `{hub.get('config')}`" if hub.get("config") else ""
            return f"Hugging Face dataset [{hub.get('name')}](https://huggingface.co/datasets/{hub.get('name')})" \
                   f"{config}, split `{hub.get('split')}`"
        if prov.get("dataset_id"):
            name = f" (`{prov.get('dataset_file')}`)" if prov.get("dataset_file") else ""
            return f"uploaded dataset `{prov['dataset_id']}`{name}, sha256 `{prov.get('dataset_sha256')}`"
        return "not recorded"

    def _training_data(self) -> list[str]:
        info = self.data_info
        lines = [f"- Source: {self._source(info)}."]
        validation = info.get("validation")
        ratio = (self.params.get("validation") or {}).get("split_ratio")
        if isinstance(validation, dict):
            lines.append(f"- Validation: {self._source(validation)}.")
        elif ratio:
            stratified = self.trainer.split_note if self.trainer else ""
            lines.append(f"- Validation: {ratio * 100:g}% of the rows held out at random (seed "
                         f"{(self.params.get('hyperparameters') or {}).get('seed')}){stratified}.")
        lines.append(f"- Rows used: {_fmt(info.get('train_rows'))} for training, "
                     f"{_fmt(info.get('validation_rows'))} for validation.")
        dropped = info.get("dropped_rows")
        lines.append(f"- Rows dropped: {_fmt(dropped)}. Rows that fail the task's checks (an empty text, a "
                     "malformed answer) are not dropped: the job is refused and names them.")
        blank = info.get("blank_texts_skipped")
        if isinstance(blank, dict):
            lines.append(f"- Blank texts skipped (they hold no tokens): {blank.get('train')} in training, "
                         f"{blank.get('validation')} in validation.")
        columns = self.params.get("columns")
        if isinstance(columns, dict) and columns:
            lines += ["", "Column mapping (task field → dataset column):", ""]
            lines += _table(["Field", "Column"], [[_code(f), _code(c)] for f, c in columns.items()])
        counts = info.get("label_counts")
        if isinstance(counts, dict):
            train, val = counts.get("train") or {}, counts.get("validation") or {}
            labels = sorted(set(train) | set(val))
            lines += ["", "Label counts:", ""]
            lines += _table(["Label", "Train", "Validation"],
                            [[_code(label), train.get(label, 0), val.get(label, 0)]
                             for label in labels[:MAX_TABLE_ROWS]])
            if len(labels) > MAX_TABLE_ROWS:
                lines.append(f"\n({len(labels) - MAX_TABLE_ROWS} more labels not shown.)")
        return lines

    def _preprocessing(self) -> list[str]:
        facts = self.params.get("preprocessing")
        if not isinstance(facts, dict) or not facts:
            facts = dict(self.serving)
            if not facts:
                return ["Not recorded for this version."]
        order = {key: i for i, key in enumerate(_PREPROCESSING_ORDER)}
        lines = [f"- {key}: {value if isinstance(value, str) and key != 'prefix' else _code(json.dumps(value))}"
                 for key, value in sorted(facts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
                 if value is not None]
        base = self.base_hub or self.base_parent
        if base:
            lines.append(f"- The tokenizer is the base model's (`{base}`), saved with the model.")
        return lines

    def _hyperparameters(self) -> list[str]:
        # The job's values, then the schedule and Trainer settings they became: a name in both shows the value
        # the run used (a job's `eval_steps: null` is the schedule's number of steps).
        rows: dict[str, list[str]] = {}
        for group, label in (("hyperparameters", "job"), ("schedule", "schedule"),
                             ("effective_hyperparameters", "Trainer")):
            values = self.params.get(group)
            if not isinstance(values, dict):
                continue
            for key, value in values.items():
                shown = _code(value if isinstance(value, str) else json.dumps(value))
                if key not in rows:
                    rows[key] = [_code(key), shown, label]
                elif rows[key][1] != shown:
                    rows[key] = [_code(key), shown, f"{label} (the job gave {rows[key][1]})"]
        if not rows:
            return ["Not recorded for this version."]
        return ["Every effective value: the job's hyperparameters with their defaults filled in, the step "
                "schedule, and the Trainer settings they produced.", "",
                *_table(["Name", "Value", "From"], rows.values())]

    def _training_results(self) -> list[str]:
        rows = self.params.get("training_results")
        if not isinstance(rows, list) or not rows:
            return ["No per-evaluation log was recorded for this version."]
        keys: list[str] = []
        for row in rows:
            keys += [k for k in (row.get("metrics") or {}) if k not in keys]
        header = ["Epoch", "Step", "Training loss", "Validation loss", *(_METRIC_NAMES.get(k, k) for k in keys)]
        table = [[row.get("epoch"), row.get("step"),
                  "No log" if row.get("training_loss") is None else row["training_loss"],
                  row.get("validation_loss"), *((row.get("metrics") or {}).get(k) for k in keys)]
                 for row in rows]
        lines = ["One row per evaluation during training:", "", *_table(header, table)]
        best = self.params.get("best_step")
        if best is not None:
            metric = (self.params.get("effective_hyperparameters") or {}).get("metric_for_best_model")
            lines += ["", f"The saved weights are those of step {best}, the best evaluation by {_code(metric)}."]
        return lines

    def _evaluation_results(self) -> list[str]:
        validation = self._validation_dataset()
        lines = [f"On the validation data ({validation.get('dataset_name')}, {validation.get('dataset_split')}), "
                 "at the end of training (the same numbers as `metrics.json`):", ""]
        lines += _table(["Metric", "Value"], [[_METRIC_NAMES.get(k, _code(k)), repr(v)]
                                              for k, v in sorted(self.metrics.items())])
        for evaluation in self.evaluations:
            ds = self._evaluation_dataset(evaluation)
            lines += ["", f"### Evaluation {_code(evaluation.get('id'))}", "",
                      f"On {ds['dataset_name']}"
                      + (f", config `{ds.get('dataset_config')}`" if ds.get("dataset_config") else "")
                      + f", split `{ds['dataset_split']}`"
                      + (f", sha256 `{evaluation['dataset_sha256']}`" if evaluation.get("dataset_sha256") else "")
                      + ":", ""]
            lines += _table(["Metric", "Value"], [[_METRIC_NAMES.get(k, _code(k)), repr(v)]
                                                  for k, v in sorted((evaluation.get("metrics") or {}).items())])
        return lines

    def _how_to_use(self) -> list[str]:
        model_id = f"./{self.name}-{self.version}"
        load = [f'model_id = "{model_id}"  # this folder, or the Hub repo it was pushed to ("org/name")']
        endpoint, body = (self.info.route, self.info.example) if self.info else ("/", {})
        body = {"model": self.ref, **body}
        snippet = self.trainer.card_snippet(self.serving, load=load) if self.trainer else load
        code = ["With `transformers`:", "", "```python", *snippet, "```", ""]
        if self.adapter is not None:
            code = ["With `peft` and `transformers` (the base model, then the adapter on it; `model` is then used "
                    "as a full model is):", "", "```python", *self._base_loading(), "```", ""]
        return [
            *code,
            "From a running ftserve (add `-H 'Authorization: Bearer <key>'` when API keys are on):", "",
            "```bash", f"curl -X POST http://localhost:8000{endpoint} -H 'content-type: application/json' \\",
            f"     -d '{json.dumps(body)}'", "```",
        ]

    def _frameworks(self) -> list[str]:
        libraries = self.params.get("libraries")
        if not isinstance(libraries, dict):
            return ["Not recorded for this version."]
        names = {**_LIBRARY_NAMES, "peft": "PEFT"} if self.adapter is not None else _LIBRARY_NAMES
        lines = [f"- {label} {libraries.get(key) or 'unknown'}" for key, label in names.items()]
        if self.params.get("device"):
            lines.append(f"- Trained on: {_code(self.params['device'])}"
                         + (f" in {self.params['training_seconds']:.1f} s"
                            if isinstance(self.params.get("training_seconds"), (int, float)) else ""))
        return lines
