"""Model cards in the Hub's format, rendered in process from a version dir's training_params.json: they parse
with huggingface_hub, carry every front-matter field, every heading, the version's metrics unrounded in the
model-index and one training-results row per evaluation; the license defaults come in their order."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from huggingface_hub import ModelCard

from core.hfcache import place_in_cache
from training.model_card import HEADINGS, PIPELINE_TAGS, evaluation_rows, render_card, write_card
from training.provenance import base_model_info, cached_revision, card_license, resolve_license
from training.spec import JobRequest, build_spec
from training.tasks import get_task

SHA = "ab" * 32
LOG_HISTORY = [
    {"loss": 0.71, "grad_norm": 1.5, "learning_rate": 5e-5, "epoch": 0.25, "step": 1},
    {"eval_loss": 0.69, "eval_accuracy": 0.5, "eval_f1_macro": 1 / 3, "eval_runtime": 0.1,
     "eval_samples_per_second": 30.0, "eval_steps_per_second": 3.0, "epoch": 0.25, "step": 1},
    {"loss": 0.66, "epoch": 0.5, "step": 2},
    {"loss": 0.61, "epoch": 0.75, "step": 3},
    {"eval_loss": 0.6512345678901234, "eval_accuracy": 0.75, "eval_f1_macro": 0.7000000000000001,
     "epoch": 0.75, "step": 3},
    {"train_runtime": 3.25, "train_loss": 0.66, "total_flos": 12.0, "epoch": 0.75, "step": 3},
]
# Floats that rounding would change: the model-index must hold them exactly.
METRICS = {"accuracy": 0.75, "f1_macro": 0.1 + 0.2, "eval_loss": 0.6512345678901234, "train_loss": 2 / 3,
           "train_runtime_s": 3.2500001}


def training_params(**over: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "task": "classification", "base_model": "org/tiny-bert", "base_model_resolved": "hub:org/tiny-bert",
        "base": {"hub": "org/tiny-bert", "parent": None, "revision": "0123abcd"},
        "license": "mit", "license_source": "job", "language": ["en", "fr"],
        "dataset": {"id": "ds_abc", "hub": None, "config": None, "split": "train"},
        "validation": {"id": None, "hub": None, "config": None, "split": None, "split_ratio": 0.1},
        "columns": {"text": "review", "label": "stars"},
        "hyperparameters": {"epochs": 3.0, "max_steps": 3, "learning_rate": 5e-5, "batch_size": 8, "seed": 42,
                            "eval_steps": None},
        "serving": {"labels": ["bad", "good|ok"], "max_length": 128},
        "data": {"dataset_id": "ds_abc", "dataset_sha256": SHA, "dataset_file": "reviews.csv", "train_rows": 90,
                 "validation_rows": 10, "dropped_rows": 0,
                 "label_counts": {"train": {"bad": 45, "good|ok": 45}, "validation": {"bad": 5, "good|ok": 5}}},
        "preprocessing": {"tokenizer": "BertTokenizerFast", "max_length": 128, "truncation": "cut at max_length",
                          "padding": "dynamic"},
        "schedule": {"total_steps": 3, "eval_steps": 2, "logging_steps": 1},
        "effective_hyperparameters": {"optim": "adamw_torch", "metric_for_best_model": "f1_macro", "fp16": False},
        "training_results": evaluation_rows(LOG_HISTORY),
        "best_step": 3,
        "libraries": {"ftserve": "0.1.0", "transformers": "5.24.0", "torch": "2.13.0", "datasets": "5.2.0",
                      "tokenizers": "0.23.3"},
        "device": "cpu", "training_seconds": 3.25,
    }
    return {**params, **over}


def version_dir(tmp_path: Path, params: dict[str, Any]) -> Path:
    path = tmp_path / "models" / "sent" / "1"
    path.mkdir(parents=True)
    (path / "training_params.json").write_text(json.dumps(params))
    return path


def headings(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", text, re.MULTILINE)


def index_results(card: ModelCard) -> list[dict[str, Any]]:
    return card.data.to_dict()["model-index"][0]["results"]


def metrics_of(result: dict[str, Any]) -> dict[str, Any]:
    return {m["type"]: m["value"] for m in result["metrics"]}


def test_evaluation_rows_one_per_evaluation_with_the_last_training_loss() -> None:
    rows = evaluation_rows(LOG_HISTORY)
    assert rows == [
        {"epoch": 0.25, "step": 1, "training_loss": 0.71, "validation_loss": 0.69,
         "metrics": {"accuracy": 0.5, "f1_macro": 1 / 3}},
        {"epoch": 0.75, "step": 3, "training_loss": 0.61, "validation_loss": 0.6512345678901234,
         "metrics": {"accuracy": 0.75, "f1_macro": 0.7000000000000001}},
    ]
    first_eval_first = evaluation_rows([{"eval_loss": 2.0, "epoch": 0.1, "step": 1}],
                                       derive=get_task("generation").derived_metrics)
    assert first_eval_first[0]["training_loss"] is None
    assert first_eval_first[0]["metrics"]["perplexity"] == pytest.approx(7.389056, rel=1e-6)


def test_card_parses_with_every_field_heading_and_exact_metrics(tmp_path: Path) -> None:
    path = version_dir(tmp_path, training_params())
    evaluation = {"id": "eval_1", "dataset": {"hub": "org/reviews", "config": None, "split": "test"},
                  "dataset_sha256": None, "metrics": {"accuracy": 0.8125, "f1_macro": 0.123456789012345}}
    write_card(path, name="sent", version=1, task="classification", metrics=METRICS, evaluations=[evaluation])
    card = ModelCard.load(path / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "mit"
    assert data["base_model"] == "org/tiny-bert"
    assert "datasets" not in data  # an upload has no hub id
    assert data["language"] == ["en", "fr"]
    assert data["tags"] == ["ftserve", "classification"]
    assert data["pipeline_tag"] == "text-classification"
    assert data["library_name"] == "transformers"
    results = index_results(card)
    assert len(results) == 2
    assert metrics_of(results[0]) == METRICS  # exactly, not rounded
    assert results[0]["dataset"]["revision"] == SHA and results[0]["dataset"]["type"] == "ds_abc"
    assert metrics_of(results[1]) == evaluation["metrics"]
    assert results[1]["dataset"]["type"] == "org/reviews" and results[1]["dataset"]["split"] == "test"

    text = card.text
    assert headings(text) == list(HEADINGS)
    for fact in ("`bad`", "`good|ok`", "`en`", "128 tokens", "reviews.csv", SHA, "90 for training",
                 "10 for validation", "Rows dropped: 0", "| `text` | `review` |", "| `good\\|ok` | 45 | 5 |",
                 "BertTokenizerFast", "`adamw_torch`", "| `learning_rate` | `5e-05` | job |", "`total_steps`",
                 "| `eval_steps` | `2` | schedule (the job gave `null`) |", "### Evaluation `eval_1`",
                 "Transformers 5.24.0", "PyTorch 2.13.0", "Datasets 5.2.0", "Tokenizers 0.23.3", "ftserve 0.1.0",
                 'pipeline("text-classification"', "localhost:8000/classify", '"model": "sent:1"',
                 "revision `0123abcd`", "License: `mit`"):
        assert fact in text, fact
    section = text.split("## Training results")[1].split("## ")[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(evaluation_rows(LOG_HISTORY))  # the header, then one row per evaluation
    assert table[1].startswith("| 0.2500 | 1 | 0.7100 | 0.6900 | 0.5000 | 0.3333 |")


def test_hub_data_registered_base_and_unknown_license(tmp_path: Path) -> None:
    params = training_params(
        base_model="sent:1", base_model_resolved="model:sent:1",
        base={"hub": "org/tiny-bert", "parent": "sent:1", "revision": "sent:1"},
        license="other", license_source="unknown", language=None,
        data={"hub": {"name": "org/reviews", "config": "plain", "split": "train"}, "train_rows": 9,
              "validation_rows": 1, "dropped_rows": 0,
              "validation": {"hub": {"name": "org/reviews-val", "config": None, "split": "validation"}}},
        validation={"id": None, "hub": "org/reviews-val", "config": None, "split": "validation",
                    "split_ratio": None})
    text = render_card(version_dir(tmp_path, params), name="sent2", version=3, task="classification",
                       metrics=METRICS)
    card = ModelCard(text)
    data = card.data.to_dict()
    assert data["license"] == "other" and "License: unknown" in card.text
    assert data["base_model"] == "org/tiny-bert"  # the registered parent's own hub base
    assert "registered ftserve model `sent:1`" in card.text
    assert data["datasets"] == ["org/reviews", "org/reviews-val"]
    assert "language" not in data and "not stated" in card.text
    assert index_results(card)[0]["dataset"] | {} == {
        "name": "org/reviews-val", "type": "org/reviews-val", "split": "validation"}
    assert metrics_of(index_results(card)[0]) == METRICS


@pytest.mark.parametrize("task", sorted(PIPELINE_TAGS))
def test_every_task_renders_its_pipeline_tag_and_snippet(tmp_path: Path, task: str) -> None:
    tokenizer = SimpleNamespace(eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    serving = {"classification": {"labels": ["a", "b"], "max_length": 64},
               "question-answering": {"max_length": 384, "doc_stride": 128, "max_answer_length": 30},
               "summarization": {"prefix": "summarize: ", "max_length": 512, "max_target_length": 64},
               "generation": {"block_size": 128}}[task]
    facts = get_task(task).preprocessing(serving=serving, tokenizer=tokenizer)  # type: ignore[arg-type]
    params = training_params(task=task, serving=serving, preprocessing=facts, data={"train_rows": 5,
                                                                                   "validation_rows": 1})
    metrics = {"eval_loss": 1.25, "train_loss": 1.5}
    card = ModelCard(render_card(version_dir(tmp_path, params), name="m", version=1, task=task, metrics=metrics))
    assert card.data.pipeline_tag == PIPELINE_TAGS[task]
    assert headings(card.text) == list(HEADINGS)
    assert metrics_of(index_results(card)[0]) == metrics
    expected = {"classification": ["max_length: `64`", "DataCollatorWithPadding"],
                "question-answering": ["doc_stride: `128`", "only_second", "AutoModelForQuestionAnswering"],
                "summarization": ['prefix: `"summarize: "`', "max_target_length: `64`", '"summarize: " + document'],
                "generation": ["block_size: `128`", "EOS ('<|endoftext|>')", "AutoModelForCausalLM"]}[task]
    for fact in expected:
        assert fact in card.text, fact
    # Snippets compile.
    for block in re.findall(r"```python\n(.*?)```", card.text, re.DOTALL):
        compile(block, "snippet", "exec")


def test_a_version_dir_with_nothing_recorded_still_renders(tmp_path: Path) -> None:
    empty = tmp_path / "imported"
    empty.mkdir()
    card = ModelCard(render_card(empty, name="imp", version=1, task="question-answering", metrics={"f1": 0.5}))
    assert card.data.license == "other" and headings(card.text) == list(HEADINGS)
    assert metrics_of(index_results(card)[0]) == {"f1": 0.5}


def test_task_data_facts() -> None:
    rows = [{"text": "x", "label": 1}, {"text": "y", "label": 1.0}, {"text": "z", "label": "neg"}]
    assert get_task("classification").data_facts(rows, rows[:1]) == {
        "label_counts": {"train": {"1": 2, "neg": 1}, "validation": {"1": 1}}}
    assert get_task("generation").data_facts([{"text": " "}, {"text": "a"}], []) == {
        "blank_texts_skipped": {"train": 1, "validation": 0}}


def test_license_defaults_in_order(tmp_path: Path) -> None:
    assert resolve_license("MIT", default="apache-2.0", base_license="gpl-3.0") == {"id": "mit", "source": "job"}
    assert resolve_license(None, default="apache-2.0", base_license="gpl-3.0") == {
        "id": "apache-2.0", "source": "setting"}
    assert resolve_license(None, default="", base_license="gpl-3.0") == {"id": "gpl-3.0", "source": "base_model"}
    assert resolve_license(None, default="", base_license=None) == {"id": "other", "source": "unknown"}


def test_base_model_license_and_revision_from_the_cache(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "README.md").write_text("---\nlicense: Apache-2.0\n---\n# a model\n")
    hf_home = tmp_path / "hf"
    snapshot = place_in_cache(src, hf_home=hf_home, repo_id="org/with-card")
    cache = hf_home / "hub"
    assert cached_revision("org/with-card", cache_dir=cache) == snapshot.name
    assert base_model_info("hub:org/with-card", "org/with-card", cache_dir=cache) == {
        "hub": "org/with-card", "parent": None, "revision": snapshot.name, "license": "apache-2.0"}
    # Not cached, no card, a card that does not parse: no license, and no error.
    assert base_model_info("hub:org/absent", "org/absent", cache_dir=cache) == {
        "hub": "org/absent", "parent": None, "revision": None, "license": None}
    (src / "README.md").unlink()
    place_in_cache(src, hf_home=hf_home, repo_id="org/no-card")
    assert base_model_info("hub:org/no-card", "org/no-card", cache_dir=cache)["license"] is None
    broken = tmp_path / "broken.md"
    broken.write_text("---\nlicense: [unclosed\n---\n")
    assert card_license(broken) is None
    # A registered base: its own card's license, and the hub id its training_params.json names.
    parent = version_dir(tmp_path, training_params())
    write_card(parent, name="sent", version=1, task="classification", metrics=METRICS)
    assert base_model_info("model:sent:1", str(parent)) == {
        "hub": "org/tiny-bert", "parent": "sent:1", "revision": "sent:1", "license": "mit"}


def test_job_license_and_language_fields() -> None:
    base = {"task": "classification", "base_model": "org/m", "dataset": {"id": "ds_1"}}
    spec = build_spec(JobRequest.model_validate({**base, "license": "CC-BY-4.0", "language": "en"}),
                      default_model_name="job_1")
    assert (spec.license, spec.language) == ("cc-by-4.0", ["en"])
    spec = build_spec(JobRequest.model_validate({**base, "language": ["en", "pt-BR"]}), default_model_name="j")
    assert (spec.license, spec.language) == (None, ["en", "pt-BR"])
    for bad in ({"license": "mit license"}, {"license": "x" * 65}, {"license": ""}, {"language": []},
                {"language": ["english language"]}, {"language": ["en"] * 33}, {"language": "e" * 40}):
        with pytest.raises(ValueError):
            JobRequest.model_validate({**base, **bad})
