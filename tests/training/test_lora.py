"""LoRA: the job's `method` (validation and defaults), the layers adapted per architecture (peft's own table), the
task head saved with the adapter, the checks that name a model's layers, and a LoRA run that resumes from its
adapter checkpoint. In process, on tiny models built from configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.errors import UserError, ValidationFailed
from training.spec import JobRequest, LoraMethod, build_spec


def request(**over: object) -> JobRequest:
    body: dict[str, object] = {"task": "classification", "base_model": "org/m", "dataset": {"id": "ds_x"}}
    return JobRequest.model_validate({**body, **over})


def test_method_defaults_to_full_and_lora_fields_to_their_defaults() -> None:
    assert build_spec(request(), default_model_name="j").method == "full"
    spec = build_spec(request(method={"type": "lora"}), default_model_name="j")
    assert spec.method == LoraMethod(type="lora", r=8, alpha=16, dropout=0.05, target_modules=None)
    # Echoed as stored on the job row, and read back the same way by the worker.
    stored = json.loads(spec.model_dump_json())
    assert stored["method"] == {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": None}
    assert type(spec).model_validate(stored).method == spec.method
    given = build_spec(request(method={"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0,
                                       "target_modules": ["query", "attention.self.value", "query"]}),
                       default_model_name="j").method
    assert isinstance(given, LoraMethod) and given.target_modules == ["query", "attention.self.value"]


@pytest.mark.parametrize(("method", "where"), [
    ({"type": "lora", "r": 0}, "method.lora.r"),
    ({"type": "lora", "r": 257}, "method.lora.r"),
    ({"type": "lora", "alpha": 0}, "method.lora.alpha"),
    ({"type": "lora", "dropout": 1.0}, "method.lora.dropout"),
    ({"type": "lora", "dropout": -0.1}, "method.lora.dropout"),
    ({"type": "lora", "target_modules": []}, "method.lora.target_modules"),
    ({"type": "lora", "target_modules": ["q.*"]}, "method.lora.target_modules.0"),
    ({"type": "lora", "target_modules": ["x"] * 65}, "method.lora.target_modules"),
    ({"type": "lora", "rank": 8}, "method.lora.rank"),
    ({"type": "lorax"}, "method.lora.type"),
    ("half", "method.full"),
    (8, "method.lora"),
])
def test_bad_methods_name_the_field(method: Any, where: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        request(method=method)
    assert [".".join(map(str, e["loc"])) for e in caught.value.errors()] == [where]


def test_fp16_and_bf16_together_are_refused() -> None:
    with pytest.raises(ValidationFailed, match="fp16 and bf16 cannot both be true"):
        build_spec(request(hyperparameters={"fp16": True, "bf16": True}), default_model_name="j")


def test_default_targets_are_peft_s_table_plus_distilbert() -> None:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults

    from training.lora import default_targets

    for model_type in ("bert", "roberta", "t5", "mt5", "bart", "gpt2", "xlm-roberta"):
        assert default_targets(model_type) == list(peft_defaults[model_type]), model_type
    assert "distilbert" not in peft_defaults  # peft has none: ours names DistilBERT's query/value projections
    assert default_targets("distilbert") == ["q_lin", "v_lin"]
    assert default_targets("no-such-architecture") is None


def _tiny(kind: str, task: str) -> Any:
    """A randomly initialised tiny model of an architecture, with the task's head."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    common = {"vocab_size": 64}
    config = {
        "bert": lambda: tf.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, **common),
        "roberta": lambda: tf.RobertaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=32, **common),
        "distilbert": lambda: tf.DistilBertConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, **common),
        "t5": lambda: tf.T5Config(d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2, **common),
        "bart": lambda: tf.BartConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                      decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, **common),
        "gpt2": lambda: tf.GPT2Config(n_embd=16, n_layer=1, n_head=2, **common),
    }[kind]()
    auto = {"classification": tf.AutoModelForSequenceClassification,
            "question-answering": tf.AutoModelForQuestionAnswering,
            "summarization": tf.AutoModelForSeq2SeqLM, "generation": tf.AutoModelForCausalLM}[task]
    return auto.from_config(config)


# architecture, task → (adapted layer names, head saved whole)
CASES = [
    ("bert", "classification", {"query", "value"}, ["classifier"]),
    ("roberta", "classification", {"query", "value"}, ["classifier"]),
    ("distilbert", "classification", {"q_lin", "v_lin"}, ["pre_classifier", "classifier"]),
    ("gpt2", "classification", {"c_attn"}, ["score"]),
    ("bert", "question-answering", {"query", "value"}, ["qa_outputs"]),
    ("distilbert", "question-answering", {"q_lin", "v_lin"}, ["qa_outputs"]),
    ("t5", "summarization", {"q", "v"}, []),
    ("bart", "summarization", {"q_proj", "v_proj"}, []),
    ("gpt2", "generation", {"c_attn"}, []),
]


@pytest.mark.parametrize(("kind", "task", "targets", "heads"), CASES)
def test_wrap_adapts_the_architecture_s_default_layers_and_saves_the_head(kind: str, task: str, targets: set[str],
                                                                         heads: list[str]) -> None:
    from training.lora import wrap

    events: list[tuple[str, str, dict[str, Any]]] = []
    model = _tiny(kind, task)
    peft_model, settings = wrap(model, method=LoraMethod(type="lora"), task=task, model_name=kind,
                                on_event=lambda *e: events.append(e))
    assert settings["modules_to_save"] == heads and set(settings["target_modules"]) == targets
    adapted = {name.split(".lora_A.")[0].rsplit(".", 1)[-1] for name, _ in peft_model.named_parameters()
               if ".lora_A." in name}
    assert adapted == targets
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    # Only the low-rank matrices and the head train; the base's own weights are frozen.
    assert trainable and all(".lora_" in n or any(f"{h}.modules_to_save" in n for h in heads) for n in trainable)
    for head in heads:
        assert any(f"{head}.modules_to_save" in n for n in trainable), head
    state = peft_model.state_dict()
    saved = __import__("peft").get_peft_model_state_dict(peft_model)
    assert sum(v.numel() for v in saved.values()) < sum(v.numel() for v in state.values()) / 3
    assert events and events[0][2]["default_targets"] is True and events[0][2]["trainable_parameters"] > 0


def test_unknown_targets_and_missing_defaults_name_the_model_s_layers() -> None:
    from training.lora import wrap

    model = _tiny("bert", "classification")
    with pytest.raises(UserError) as caught:
        wrap(model, method=LoraMethod(type="lora", target_modules=["query", "q_proj"]), task="classification",
             model_name="org/tiny", on_event=lambda *e: None)
    message = caught.value.message
    assert "'q_proj' is not a layer of org/tiny" in message
    assert "query" in message and "value" in message and "dense" in message
    assert "classifier" not in message  # the head is trained whole, not adapted

    model.config.model_type = "unheard-of"
    with pytest.raises(UserError, match=r"no default LoRA target_modules for model type 'unheard-of'.*query"):
        wrap(model, method=LoraMethod(type="lora"), task="classification", model_name="org/tiny",
             on_event=lambda *e: None)


def test_targets_are_checked_from_the_safetensors_header_without_loading(tmp_path: Path) -> None:
    from training.lora import check_targets_at_submit, weight_modules

    _tiny("gpt2", "generation").save_pretrained(tmp_path)
    modules = weight_modules(tmp_path)
    assert modules is not None and "transformer.h.0.attn.c_attn" in modules
    assert not any(m.endswith("ln_1") for m in modules)  # 1-D LayerNorm weights are no layers LoRA adapts
    check_targets_at_submit(LoraMethod(type="lora", target_modules=["c_attn", "attn.c_proj"]), folder=tmp_path,
                            model="gpt2")
    with pytest.raises(ValidationFailed, match=r"'query' is not a layer of gpt2 .*c_attn, c_fc, c_proj"):
        check_targets_at_submit(LoraMethod(type="lora", target_modules=["query"]), folder=tmp_path, model="gpt2")
    # Weights this server does not have (not cached): left to the worker.
    check_targets_at_submit(LoraMethod(type="lora", target_modules=["query"]), folder=tmp_path / "none", model="x")
    check_targets_at_submit(LoraMethod(type="lora", target_modules=["query"]), folder=None, model="x")


def test_config_overrides_keep_what_the_task_set() -> None:
    from training.lora import config_overrides

    base = {"model_type": "bert", "hidden_size": 16, "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
            "architectures": ["BertModel"], "transformers_version": "5"}
    task = {**base, "id2label": {"0": "neg", "1": "pos"}, "problem_type": "single_label_classification",
            "architectures": ["BertForSequenceClassification"], "transformers_version": "6"}
    assert config_overrides(task, base) == {"id2label": {"0": "neg", "1": "pos"},
                                            "problem_type": "single_label_classification"}


# --- a LoRA run that is stopped and resumed from its adapter checkpoint ------------------------------------------

def test_a_lora_run_resumes_from_its_adapter_checkpoint(tmp_path: Path) -> None:
    from tests.tinymodels import save_tiny_classifier, sentiment_csv
    from training.data import FileSource
    from training.runner import Cancelled, TrainingData, run

    base = save_tiny_classifier(tmp_path / "base")
    data = tmp_path / "train.csv"
    data.write_bytes(sentiment_csv(40))
    spec = build_spec(request(method={"type": "lora", "r": 4},
                              hyperparameters={"max_steps": 6, "eval_steps": 1, "batch_size": 4, "seed": 3,
                                               "learning_rate": 1e-2, "save_total_limit": 10}),
                      default_model_name="m")
    checkpoints = tmp_path / "checkpoints"
    steps: list[int] = []

    def attempt(out: Path, *, stop_after: int | None, resume_from: Path | None) -> Any:
        first: list[int] = []

        def progress(p: dict[str, Any]) -> None:
            first.append(p["step"]) if not first else None
            steps.append(p["step"])

        result = run(spec, data=TrainingData(train=FileSource(data, "csv", "train.csv")), model_source=str(base),
                     base_model_resolved="model:base:1", out_dir=out, checkpoints_dir=checkpoints,
                     on_progress=progress, on_event=lambda *e: None,
                     should_stop=lambda: stop_after is not None and bool(steps) and steps[-1] >= stop_after,
                     resume_from=resume_from)
        return result, first[0]

    with pytest.raises(Cancelled):
        attempt(tmp_path / "out1", stop_after=3, resume_from=None)
    saved = sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in saved] == ["checkpoint-1", "checkpoint-2"]
    # A checkpoint of a LoRA run holds the adapter (and the head), not the model's weights.
    assert (saved[-1] / "adapter_model.safetensors").is_file() and not (saved[-1] / "model.safetensors").exists()

    steps.clear()
    result, first_step = attempt(tmp_path / "out2", stop_after=None, resume_from=saved[-1])
    assert first_step == 2 and steps[-1] == 6
    assert result.training_params["method"] == "lora"
    assert result.training_params["adapter"]["base"] == {"resolved": "model:base:1", "hub": None, "revision": None,
                                                        "version": "base:1"}
    assert result.training_params["adapter"]["modules_to_save"] == ["classifier"]
    files = {p.name for p in result.out_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "training_params.json", "metrics.json"} <= files
    assert not files & {"model.safetensors", "config.json", "README.md"}

    # Served only from safetensors: with the weights as a pickle (which peft would fall back to), nothing loads.
    from transformers import AutoModelForSequenceClassification

    from training.lora import load_adapter

    (result.out_dir / "adapter_model.safetensors").rename(result.out_dir / "adapter_model.bin")
    from core.errors import NotReady

    with pytest.raises(NotReady, match=r"no adapter_model\.safetensors"):
        load_adapter(AutoModelForSequenceClassification, result.out_dir)


def test_segment_ids_reach_the_model_as_in_serving() -> None:
    """A QA model reads question and context with different token_type_ids: the wrapped model must pass them on
    (peft's QUESTION_ANS / SEQ_CLS wrappers drop them), or training would differ from serving."""
    import torch

    from training.lora import wrap

    peft_model, _ = wrap(_tiny("bert", "question-answering"), method=LoraMethod(type="lora"),
                         task="question-answering", model_name="bert", on_event=lambda *e: None)
    peft_model.eval()
    ids = torch.tensor([[2, 10, 11, 3, 12, 13, 3]])
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        wrapped = peft_model(input_ids=ids, token_type_ids=segments).start_logits
        inner = peft_model.get_base_model()(input_ids=ids, token_type_ids=segments).start_logits
        zeros = peft_model.get_base_model()(input_ids=ids).start_logits
    assert torch.allclose(wrapped, inner) and not torch.allclose(wrapped, zeros)


def test_a_damaged_shard_index_leaves_the_target_check_to_the_worker(tmp_path: Path) -> None:
    """Submit reads the index of a sharded registered version: a damaged one is no 500, and its shard names cannot
    point the header read outside the folder."""
    from training.lora import weight_modules

    index = tmp_path / "model.safetensors.index.json"
    for text in ("{not json", "[1, 2]", '{"weight_map": {"a": ["x"]}}'):
        index.write_text(text)
        assert weight_modules(tmp_path) is None, text
    outside = tmp_path.parent / f"{tmp_path.name}-outside.safetensors"
    _tiny("gpt2", "generation").save_pretrained(tmp_path / "m")
    outside.write_bytes((tmp_path / "m" / "model.safetensors").read_bytes())
    index.write_text(json.dumps({"weight_map": {"w": f"../{outside.name}"}}))
    assert weight_modules(tmp_path) is None
