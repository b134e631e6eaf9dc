"""The model card of an imported version whose archive had none: Hub front matter and what is known of it.

Kept apart from training/model_card.py (a trained version's card) so that either can change alone.
"""

from __future__ import annotations

from typing import Any

from core.tasks import TASKS


def imported_card(*, name: str, version: int, task: str, base_model: str | None, license: str,
                  labels: list[str], metrics: dict[str, float], archive_sha256: str | None = None,
                  hub: dict[str, Any] | None = None) -> str:
    """`archive_sha256` for an uploaded archive, `hub` ({name, commit}) for a Hub import."""
    from huggingface_hub import ModelCard, ModelCardData

    data: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": TASKS[task].pipeline_tag,
                            "tags": ["ftserve", task, "imported"], "license": license}
    if base_model:
        data["base_model"] = base_model
    lines = [
        f"# {name}:{version}", "",
        (f"A {task} model imported into ftserve from the Hub model `{hub['name']}` at commit `{hub['commit']}`"
         if hub else f"A {task} model imported into ftserve from an archive (sha256 `{archive_sha256}`)")
        + "; it was not trained here, so its training data, preprocessing and evaluation are unknown to this "
        "registry.", "",
    ]
    if base_model:
        lines += [f"Its config names `{base_model}` as the model it came from.", ""]
    if license == "other":
        lines += ["The license is unknown: the model did not state one.", ""]
    if labels:
        lines += ["## Labels", "", ", ".join(f"`{label}`" for label in labels[:100]), ""]
    if metrics:
        lines += ["## Metrics (from the archive's metrics.json)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in sorted(metrics.items())]
        lines.append("")
    endpoint = TASKS[task].endpoint
    lines += ["## How to use", "", "```bash",
              f"curl -X POST $FTSERVE/{endpoint} -H 'Content-Type: application/json' "
              f"-d '{{\"model\": \"{name}:{version}\", ...}}'", "```", ""]
    card = ModelCard(f"---\n{ModelCardData(**data).to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)
