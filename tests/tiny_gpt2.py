"""A tiny GPT-2 (byte-level BPE trained in-process) placed in an HF cache layout under a hub id."""

from __future__ import annotations

from pathlib import Path

from tests.tinymodels import cache_model

TINY_GPT2 = "ftserve-test/tiny-gpt2"


def build_tiny_gpt2(shared_data: Path, hf_home: Path, *, repo_id: str = TINY_GPT2, n_embd: int = 32,
                    n_layer: int = 2, n_head: int = 2, vocab_size: int = 1000) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    text = (shared_data / "generation" / "train.txt").read_text(encoding="utf-8")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.split("\n\n"), trainer)
    fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>", model_max_length=256)
    eos = tok.token_to_id("<|endoftext|>")
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=256, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, bos_token_id=eos, eos_token_id=eos)
    return cache_model(hf_home, repo_id, fast, lambda: GPT2LMHeadModel(config))
