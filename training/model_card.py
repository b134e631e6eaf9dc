"""The model card (README.md) written beside every registered version."""

from __future__ import annotations

from typing import Any

_ENDPOINT_EXAMPLES = {
    "classification": ('/classify', '{"model": "%s", "inputs": ["great film"]}'),
    "question-answering": ('/answer', '{"model": "%s", "question": "…", "context": "…"}'),
    "summarization": ('/summarize', '{"model": "%s", "inputs": ["…"]}'),
    "generation": ('/generate', '{"model": "%s", "prompt": "…"}'),
}


def render(*, name: str, version: int, task: str, params: dict[str, Any], metrics: dict[str, Any]) -> str:
    endpoint, body = _ENDPOINT_EXAMPLES[task]
    data = params.get("data", {})
    lines = [
        "---",
        f"library_name: transformers\ntags: [ftserve, {task}]",
        "---",
        f"# {name}:{version}",
        "",
        f"A **{task}** model fine-tuned with ftserve from `{params.get('base_model')}` "
        f"(resolved: `{params.get('base_model_resolved')}`).",
        "",
        "## Data",
        "",
    ]
    lines += [f"- {k}: `{v}`" for k, v in sorted(data.items())]
    lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())]
    lines += ["", "## Hyperparameters", "", "```json"]
    import json

    lines += [json.dumps(params.get("hyperparameters", {}), indent=2, sort_keys=True), "```", ""]
    lines += [
        "## Use",
        "",
        "```bash",
        f"curl -X POST localhost:8000{endpoint} -H 'content-type: application/json' \\",
        f"     -d '{body % f'{name}:{version}'}'",
        "```",
        "",
        "Or load the directory with `transformers` (`AutoModelFor….from_pretrained(dir)`).",
        "",
    ]
    return "\n".join(lines)
