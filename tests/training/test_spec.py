from __future__ import annotations

import pytest

from core.errors import ValidationFailed
from training.spec import JobRequest, build_spec


def request(**over: object) -> JobRequest:
    body: dict[str, object] = {"task": "classification", "base_model": "org/m", "dataset": {"id": "ds_x"}}
    return JobRequest.model_validate({**body, **over})


def test_defaults_are_filled_in_and_echoed() -> None:
    spec = build_spec(request(hyperparameters={"epochs": 1}), default_model_name="job_1")
    assert spec.model_name == "job_1"
    assert spec.columns == {"text": "text", "label": "label"}
    assert spec.hyperparameters["epochs"] == 1 and spec.hyperparameters["learning_rate"] == "auto"
    assert spec.hyperparameters["batch_size"] == spec.hyperparameters["warmup_steps"] == "auto"
    assert spec.validation.split_ratio == 0.1


def test_auto_values_null_and_range_errors() -> None:
    spec = build_spec(request(hyperparameters={"epochs": None, "learning_rate": "auto", "batch_size": 8}),
                      default_model_name="j")
    assert spec.params().unresolved() == ["epochs", "learning_rate", "warmup_steps"]
    assert spec.hyperparameters["batch_size"] == 8
    # A number out of range is named once, as a range error, not also as "is not 'auto'".
    with pytest.raises(ValidationFailed) as err:
        build_spec(request(hyperparameters={"learning_rate": -1}), default_model_name="j")
    assert str(err.value) == 'hyperparameters.learning_rate: Input should be greater than 0 (or "auto")'
    assert err.value.details == [{"loc": ["hyperparameters", "learning_rate"],
                                  "msg": 'Input should be greater than 0 (or "auto")'}]
    with pytest.raises(ValidationFailed, match=r"hyperparameters\.epochs: .*valid number"):
        build_spec(request(hyperparameters={"epochs": "many"}), default_model_name="j")
    assert spec.validation.split_ratio == 0.1


def test_unknown_task_field_and_hyperparameter() -> None:
    with pytest.raises(ValidationFailed, match=r"unknown task 'nope'.*classification"):
        build_spec(request(task="nope"), default_model_name="j")
    with pytest.raises(ValidationFailed, match=r"unknown column field.*'question'"):
        build_spec(request(columns={"question": "q"}), default_model_name="j")
    with pytest.raises(ValidationFailed, match="unknown hyperparameter 'doc_stride' for task classification"):
        build_spec(request(hyperparameters={"doc_stride": 3}), default_model_name="j")


def test_dataset_ref_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        request(dataset={"id": "ds_x", "hub": "ag_news"})
    with pytest.raises(ValueError, match="exactly one"):
        request(validation={"split_ratio": 0.1, "id": "ds_y"})
