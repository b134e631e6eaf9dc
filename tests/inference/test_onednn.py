"""Linear layers on oneDNN with packed weights (inference/onednn.py): the same products as the dense layers, GPT-2's
Conv1D and plain nn.Linear alike; the decode loop over a packed model still equals unbatched `generate` on it;
generation models are packed at load unless FTSERVE_ONEDNN_LINEAR is off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.hfcache import cache_repo_dir
from inference.decode import DecodeLoop, Request
from inference.onednn import PackedLinear, pack_linear_layers
from inference.predictors.generation import GenerationPredictor
from tests.inference.test_decode import prompts
from tests.tiny_gpt2 import TINY_GPT2


@pytest.fixture(scope="module")
def snapshot(hf_home: Path) -> Path:
    (path,) = list((cache_repo_dir(hf_home, TINY_GPT2) / "snapshots").iterdir())
    return path


def packed_layers(model: Any) -> int:
    return sum(isinstance(m.__dict__.get("forward"), PackedLinear) for m in model.modules())


def test_a_packed_gpt2_computes_what_the_dense_one_does_and_the_loop_still_equals_generate(snapshot: Path) -> None:
    import torch

    predictor = GenerationPredictor(snapshot)
    ids = torch.tensor([list(predictor.tokenizer("the king spoke to the queen of the north")["input_ids"])])
    with torch.inference_mode():
        dense = predictor.model(input_ids=ids).logits
    layers = predictor.model.config.n_layer * 4 + 1  # c_attn, c_proj, c_fc, mlp c_proj per block; the LM head
    assert pack_linear_layers(predictor.model) == layers == packed_layers(predictor.model)
    with torch.inference_mode():
        packed = predictor.model(input_ids=ids).logits
    assert torch.allclose(packed, dense, atol=1e-5, rtol=1e-4)

    loop = DecodeLoop(predictor.model, predictor.tokenizer, name="tiny:1", finish=predictor._finish,
                      max_tokens=100_000, max_queue=64, context_error=predictor.context_error)
    try:
        texts = prompts(16)
        futures = [loop.submit(Request(list(predictor.tokenizer(t)["input_ids"]), 6 + i)) for i, t in enumerate(texts)]
        assert [f.result(120) for f in futures] == [predictor._one(t, max_new_tokens=6 + i)
                                                   for i, t in enumerate(texts)]
    finally:
        loop.close()


def test_plain_linear_layers_without_bias_are_packed_too() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 300, (3, 11))
    with torch.inference_mode():
        dense = model(input_ids=ids).logits
    assert pack_linear_layers(model) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer; the LM head
    with torch.inference_mode():
        assert torch.allclose(model(input_ids=ids).logits, dense, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("on", [True, False])
def test_generation_models_are_packed_at_load_unless_the_setting_is_off(snapshot: Path, on: bool) -> None:
    from inference.service import _load_predictor

    predictor = _load_predictor("generation", str(snapshot), onednn_linear=on)
    assert packed_layers(predictor.model) == (predictor.model.config.n_layer * 4 + 1 if on else 0)
