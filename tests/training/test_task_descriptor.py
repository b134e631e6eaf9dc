"""One descriptor per task (core/tasks.py): every per-task fact is read from `TASKS`, so a new task is its modules
plus one registry entry.

Three checks: each descriptor names classes that exist and agree with it; a throwaway task registered only in
`TASKS` is picked up by every place that used to spell the tasks itself (the job spec, the training and serving
registries, the registry's "served by" message, model cards, imports); and no module outside core/tasks.py spells
a table of tasks again.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import Field

import training.tasks
from core.errors import ValidationFailed
from core.tasks import TASKS, TaskInfo, load
from inference import importing, onnx_runtime
from inference.predictors import Predictor, predictor_class
from inference.predictors.classification import ClassificationPredictor
from registry import versions
from training import spec
from training.imported_card import imported_card
from training.model_card import PIPELINE_TAGS, render_card
from training.spec import CommonParams, JobRequest, build_spec, metric_key, task_columns
from training.tasks import Task, get_task, implemented
from training.tasks.classification import ClassificationTask

ROOT = Path(__file__).resolve().parents[2]
TOY = "toy-labelling"


class ToyParams(CommonParams):
    toy_level: int = Field(default=1, ge=0, le=9)


class ToyTask(ClassificationTask):
    name = TOY


class ToyPredictor(ClassificationPredictor):
    task = TOY

    @classmethod
    def imported_serving(cls, config: dict[str, Any]) -> dict[str, Any]:
        return {"labels": ["yes", "no"], "max_length": 7}


TOY_INFO = TaskInfo(
    name=TOY, title="toy labelling", route="/label", fields={"sentence": "sentence"},
    params=f"{__name__}:ToyParams", trainer=f"{__name__}:ToyTask", predictor=f"{__name__}:ToyPredictor",
    eval_metrics=("accuracy", "eval_loss"), pipeline_tag="token-classification",
    auto_class="AutoModelForTokenClassification", architecture="encoder", heads=("ForTokenClassification",),
    peft_task_type="TOKEN_CLS", lora_head=True, example={"inputs": ["a sentence"]},
)


@pytest.mark.parametrize("name", list(TASKS))
def test_each_descriptor_names_classes_that_exist_and_agree(name: str) -> None:
    import transformers
    from peft import TaskType

    info = TASKS[name]
    assert info.name == name and info.route.startswith("/") and info.fields and info.heads
    params = load(info.params)
    assert issubclass(params, CommonParams)
    trainer = load(info.trainer)
    assert issubclass(trainer, Task) and trainer.name == name
    assert trainer.main_metric in info.eval_metrics
    predictor = load(info.predictor)
    assert issubclass(predictor, Predictor) and predictor.task == name
    assert hasattr(transformers, info.auto_class)
    assert info.peft_task_type is None or info.peft_task_type in TaskType.__members__
    assert name in implemented() and isinstance(get_task(name), trainer) and predictor_class(name) is predictor
    assert spec.PARAMS[name] is params and spec.FIELDS[name] == dict(info.fields)


def test_the_predict_routes_are_the_descriptors() -> None:
    from api.routes.predict import router

    posted = {route.path for route in router.routes if "POST" in getattr(route, "methods", ())}
    assert posted == {info.route for info in TASKS.values()}


def test_a_task_registered_only_in_TASKS_reaches_every_place(monkeypatch: pytest.MonkeyPatch, tmp_path: Path
                                                              ) -> None:
    monkeypatch.setitem(TASKS, TOY, TOY_INFO)
    monkeypatch.setattr(training.tasks, "_TASKS", {})

    # The job spec: its params model, column fields and metrics.
    request = JobRequest(task=TOY, base_model="some-base", dataset={"id": "ds_x"},
                         hyperparameters={"toy_level": 3}, columns={"sentence": "body"})
    job = build_spec(request, default_model_name="toy")
    assert job.hyperparameters["toy_level"] == 3 and job.columns == {"sentence": "body"}
    assert isinstance(job.params(), ToyParams)
    with pytest.raises(ValidationFailed, match="allowed: sentence"):
        task_columns(TOY, {"text": "body"})
    with pytest.raises(ValidationFailed, match=f"unknown hyperparameter 'block_size' for task {TOY}"):
        build_spec(request.model_copy(update={"hyperparameters": {"block_size": 8}}), default_model_name="toy")
    assert metric_key(TOY, "eval_accuracy") == "accuracy"
    with pytest.raises(ValidationFailed, match=r"unknown task 'nope'; allowed: .*toy-labelling"):
        build_spec(request.model_copy(update={"task": "nope"}), default_model_name="toy")

    # Training and serving registries.
    assert TOY in implemented() and isinstance(get_task(TOY), ToyTask)
    assert predictor_class(TOY) is ToyPredictor
    assert onnx_runtime.outputs(TOY) == ("logits",)

    # The registry's answer for a model asked of another endpoint names the task's route.
    monkeypatch.setattr(versions, "resolve", lambda *_: SimpleNamespace(name="toy", version=1, task=TOY))
    with pytest.raises(ValidationFailed, match=f"is a {TOY} model; it is served by /label"):
        versions.resolve_for_task(None, "toy", "classification")  # type: ignore[arg-type]

    # Imports: the task's heads, its import defaults, the task check.
    config = {"architectures": ["BertForTokenClassification"], "model_type": "bert"}
    assert importing._task_of(config, None) == TOY
    assert importing.default_serving(TOY, config) == {"labels": ["yes", "no"], "max_length": 7}
    with pytest.raises(ValidationFailed, match=r"no config\.json"):
        importing.check_model_folder(tmp_path, task=TOY)  # past the task check

    # Model cards.
    assert PIPELINE_TAGS[TOY] == "token-classification"
    (tmp_path / "training_params.json").write_text(json.dumps({"serving": {"labels": ["yes", "no"]}}))
    card = render_card(tmp_path, name="toy", version=1, task=TOY, metrics={"accuracy": 0.5})
    assert "pipeline_tag: token-classification" in card
    assert "A toy labelling model, `toy:1`" in card
    assert "(served by `/label`)" in card and "curl -X POST http://localhost:8000/label" in card
    assert '"inputs": ["a sentence"]' in card
    imported = imported_card(name="toy", version=2, task=TOY, base_model=None, license="mit", labels=[],
                             metrics={})
    assert "pipeline_tag: token-classification" in imported and "$FTSERVE/label" in imported


# A literal naming two or more tasks (a dict keyed by them, a tuple or Literal of them) is a per-task table; a
# comparison with a task's name (`if task == "generation"`) is a branch of a per-task if-chain.
_PACKAGES = ("api", "cli", "core", "inference", "registry", "training", "worker")


def _task_tables(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Dict):
            items: list[ast.expr | None] = list(node.keys)
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = list(node.elts)
        elif isinstance(node, ast.Compare):
            items = [node.left, *node.comparators]
            if any(isinstance(i, ast.Constant) and i.value in TASKS for i in items):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} compares with a task name")
            continue
        else:
            continue
        names = {i.value for i in items if isinstance(i, ast.Constant) and i.value in TASKS}
        if len(names) >= 2:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {sorted(names)}")
    return found


def test_no_module_but_core_tasks_spells_a_table_of_tasks_or_branches_on_one() -> None:
    files = [p for package in _PACKAGES for p in (ROOT / package).rglob("*.py")
             if p != ROOT / "core" / "tasks.py" and "migrations" not in p.parts]
    assert len(files) > 50
    assert [t for p in files for t in _task_tables(p)] == []
