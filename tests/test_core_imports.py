"""core/ is the bottom layer: it imports no other ftserve package (core/tasks.py names their classes as strings,
resolved by the package that owns them)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"
PACKAGES = {"api", "worker", "training", "inference", "registry", "cli", "ftserve", "web", "bench"}


def test_core_imports_no_other_ftserve_package() -> None:
    offenders = []
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in PACKAGES]
    assert offenders == []
