"""schemathesis hooks for tests/e2e/test_openapi_conformance.py (loaded through SCHEMATHESIS_HOOKS).

A generated multipart body cannot name its file (the format comes from the file name), so every other upload
schemathesis makes is replaced with a small valid CSV: those answer 201, and the stateful phase follows the
document's links from them (to the dataset, its deletion, and a job trained on it)."""

from __future__ import annotations

import itertools
from typing import Any

import schemathesis

_uploads = itertools.count()
CSV = b"text,label\n" + b"".join(b"%s film,%s\n" % pair for pair in [(b"great", b"pos"), (b"dull", b"neg")] * 4)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.operation.method.upper() == "POST" and case.operation.path == "/datasets" and next(_uploads) % 2 == 0:
        kwargs["files"] = {"file": ("generated.csv", CSV)}
