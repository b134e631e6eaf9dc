"""The API's background warm-up must not break a model load that starts while it imports the ML stack."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_load_during_the_warm_up_imports_waits_for_them(tmp_path: Path) -> None:
    # A fresh interpreter: the race is in first imports. Thread A is the warm-up; thread B does what a
    # first model load does (under the cache's load lock, import a model class from transformers).
    code = textwrap.dedent(f"""
        import threading, time
        from core.settings import Settings
        from inference.cache import LOAD_LOCK
        from inference.service import InferenceService

        service = InferenceService(Settings(data_dir={str(tmp_path)!r}))
        errors = []

        def load():
            try:
                with LOAD_LOCK:  # as in ModelCache._acquire → service._load_predictor → the predictor
                    import torch  # noqa: F401
                    from transformers import AutoModelForSequenceClassification  # noqa: F401
            except Exception as exc:
                errors.append(repr(exc))

        warm = threading.Thread(target=service.warm_up)
        warm.start()
        time.sleep(0.3)
        loader = threading.Thread(target=load)
        loader.start()
        warm.join(); loader.join()
        print("errors:", errors)
        assert not errors, errors
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "errors: []" in done.stdout
