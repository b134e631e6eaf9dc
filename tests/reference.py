"""Reference runs with plain transformers (no ftserve code): what a served prediction must equal."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def classify_reference(model_dir: Path, text: str) -> tuple[str, float]:
    """One unbatched fp32 forward of the saved version dir."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(**tok(text, return_tensors="pt", truncation=True)).logits[0].float()
    probs = torch.softmax(logits, dim=-1)
    idx = int(torch.argmax(probs))
    return str(model.config.id2label[idx]), float(probs[idx])


def weights_differ(base_dir: Path, tuned_dir: Path) -> tuple[int, int]:
    """(tensors compared, tensors changed) between a base encoder and a fine-tuned model."""
    from safetensors.numpy import load_file

    base = load_file(str(base_dir / "model.safetensors"))
    tuned = load_file(str(tuned_dir / "model.safetensors"))
    compared = changed = 0
    for key, value in base.items():
        other: Any = None
        for candidate in (key, f"bert.{key}", key.removeprefix("bert.")):
            if candidate in tuned:
                other = tuned[candidate]
                break
        if other is None or other.shape != value.shape:
            continue
        compared += 1
        changed += int(abs(other.astype("float64") - value.astype("float64")).max() > 0)
    return compared, changed


def losses(events: list[dict[str, Any]]) -> list[float]:
    out = [float(e["data"]["loss"]) for e in events if e["type"] == "metrics" and "loss" in e["data"]]
    assert all(math.isfinite(x) for x in out), out
    return out
