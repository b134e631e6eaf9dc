"""`"auto"` hyperparameters: the choice (training/auto.py) and a real run that resolves and records it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training.auto import MAX_EPOCHS, choose

AUTO = {"epochs": "auto", "learning_rate": "auto", "batch_size": "auto", "warmup_steps": "auto"}


def test_small_sets_get_more_epochs_and_large_sets_fewer() -> None:
    assert choose(AUTO, n_examples=1_000, n_parameters=22_000_000, lora=False).values == {
        "batch_size": 16, "epochs": 4, "learning_rate": 1e-4, "warmup_steps": 25}  # 63 steps/epoch x 4 = 252
    assert choose(AUTO, n_examples=1_800, n_parameters=22_000_000, lora=False).values["epochs"] == 3
    assert choose(AUTO, n_examples=50_000, n_parameters=22_000_000, lora=False).values["epochs"] == 2
    assert choose(AUTO, n_examples=500_000, n_parameters=22_000_000, lora=False).values["epochs"] == 1
    tiny = choose(AUTO, n_examples=40, n_parameters=22_000_000, lora=False)
    assert tiny.values["epochs"] == MAX_EPOCHS and tiny.values["batch_size"] == 8
    assert "capped" in tiny.reasons["epochs"] and "under 256" in tiny.reasons["batch_size"]


@pytest.mark.parametrize(("n_parameters", "full", "lora"), [
    (4_000_000, 3e-4, 1e-3), (22_000_000, 1e-4, 1e-3), (110_000_000, 5e-5, 5e-4), (350_000_000, 3e-5, 3e-4),
    (7_000_000_000, 1e-5, 2e-4)])
def test_the_learning_rate_falls_with_model_size_and_lora_takes_larger_steps(n_parameters: int, full: float,
                                                                            lora: float) -> None:
    assert choose(AUTO, n_examples=5_000, n_parameters=n_parameters, lora=False).values["learning_rate"] == full
    chosen = choose(AUTO, n_examples=5_000, n_parameters=n_parameters, lora=True)
    assert chosen.values["learning_rate"] == pytest.approx(lora)
    assert "LoRA" in chosen.reasons["learning_rate"]


def test_given_values_are_kept_and_the_warmup_reads_them() -> None:
    given = {**AUTO, "epochs": 2, "batch_size": 32, "learning_rate": 3e-5}
    chosen = choose(given, n_examples=3_200, n_parameters=22_000_000, lora=False, gradient_accumulation_steps=2)
    assert chosen.values == {"warmup_steps": 10}  # 3,200 / (32 x 2) = 50 steps/epoch x 2 = 100
    assert "warmup_steps" not in choose({**AUTO, "warmup_steps": 0}, n_examples=3_200, n_parameters=1,
                                         lora=False).values
    with_max = choose(AUTO, n_examples=3_200, n_parameters=22_000_000, lora=False, max_steps=500)
    assert with_max.values["warmup_steps"] == 50 and "max_steps overrides it" in with_max.reasons["epochs"]
    assert "warmup_steps 50 (10% of 500 optimizer steps)" in with_max.message()


def test_a_run_resolves_auto_once_reports_why_and_records_the_values(tmp_path: Path) -> None:
    from tests.tinymodels import save_tiny_classifier, sentiment_csv
    from training.data import FileSource
    from training.runner import TrainingData, run
    from training.spec import JobRequest, build_spec

    base = save_tiny_classifier(tmp_path / "base")
    data = tmp_path / "train.csv"
    data.write_bytes(sentiment_csv(40))
    request = JobRequest.model_validate({"task": "classification", "base_model": "org/m", "dataset": {"id": "d"},
                                         "hyperparameters": {"epochs": 1}})
    spec = build_spec(request, default_model_name="m")
    events: list[tuple[str, str, dict[str, Any]]] = []
    written: list[dict[str, Any]] = []
    steps: list[int] = []
    result = run(spec, data=TrainingData(train=FileSource(data, "csv", "train.csv")), model_source=str(base),
                 base_model_resolved="hub:org/m", out_dir=tmp_path / "out", checkpoints_dir=tmp_path / "ck",
                 on_progress=lambda p: steps.append(p["total_steps"]), on_event=lambda *e: events.append(e),
                 should_stop=lambda: False, on_hyperparameters=written.append)
    # 36 training rows (4 held out): batch 8 (a small set), the given epoch, 5 steps, warm-up 10 % of them.
    assert written == [result.training_params["hyperparameters"]]
    chosen = written[0]
    assert (chosen["epochs"], chosen["batch_size"], chosen["warmup_steps"]) == (1, 8, 0)
    assert isinstance(chosen["learning_rate"], float) and chosen["learning_rate"] > 1e-4  # a tiny model
    assert steps[-1] == 5
    said = [e for e in events if e[1].startswith("hyperparameters chosen (auto)")]
    assert len(said) == 1 and set(said[0][2]["auto"]) == {"learning_rate", "batch_size", "warmup_steps"}
    assert "36 training examples" in said[0][1]

    # A later attempt reads the job's stored (resolved) values: nothing is chosen again.
    again = build_spec(JobRequest.model_validate({**request.model_dump(), "hyperparameters": chosen}),
                       default_model_name="m")
    assert again.params().unresolved() == []
