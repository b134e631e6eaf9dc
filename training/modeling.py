"""Loading tokenizers and models: safetensors only, never remote code, errors a user can act on."""

from __future__ import annotations

import os
from typing import Any

from core.errors import UserError, scrub_paths
from core.settings import hub_found_unreachable


def _unloadable(source: str, exc: Exception) -> UserError:
    # Messages reach the user: they name the model, never where the server keeps files.
    detail = scrub_paths(f"{type(exc).__name__}: {exc}")
    if os.path.isabs(source):  # a registered version's folder
        return UserError(f"could not load the registered base model's files: {detail}")
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false")
    if hub_found_unreachable():
        reach = "the hub could not be reached from this machine"
    elif offline:
        reach = "the hub is disabled (offline mode, HF_HUB_OFFLINE=1)"
    else:
        reach = "the hub could not be reached or has no such model"
    return UserError(
        f"could not load base model '{source}': it is not in the local Hugging Face cache and "
        f"{reach}. Check the hub id, or pre-download it into the cache. ({detail})"
    )


def load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise _unloadable(source, exc) from exc


def load_model(auto_class: Any, source: str, **kwargs: Any) -> Any:
    """A model from a hub id or a version folder; an adapter version's folder gives its base with the adapter
    merged in (training/lora.py), so whatever loads a version gets plain weights either way."""
    from training.lora import is_adapter_dir

    if os.path.isabs(source) and is_adapter_dir(source):
        from pathlib import Path

        from training.lora import load_adapter

        return load_adapter(auto_class, Path(source), **kwargs)
    try:
        return auto_class.from_pretrained(source, trust_remote_code=False, use_safetensors=True, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _unloadable(source, exc) from exc


def effective_max_length(tokenizer: Any, requested: int) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a known limit report a huge sentinel value.
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return min(requested, limit)
    return requested


def ensure_pad_token(tokenizer: Any) -> None:
    """GPT-2 has no pad token; padding is only used for batching and is masked, so EOS serves (training and
    serving alike)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
