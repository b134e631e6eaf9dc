"""training_params.json: the effective spec a version was trained with; serving reads it too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILE = "training_params.json"


def read_training_params(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
