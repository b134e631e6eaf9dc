"""imports/ leftovers of an API process that died mid-request are removed at the next start, and only those."""

from __future__ import annotations

import os
import time
from pathlib import Path

from core.ids import new_id
from registry.store import ArtifactStore


def test_old_upload_and_export_folders_go_and_the_rest_stays(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert store.sweep_request_dirs(older_than_seconds=60) == []  # no imports/ yet
    old_upload, old_export = store.import_dir(new_id("imp")), store.import_dir(new_id("exp"))
    fresh_export, hub_import = store.import_dir(new_id("exp")), store.import_dir(new_id("job")) / "attempt-1"
    for folder in (old_upload, old_export, fresh_export, hub_import):
        (folder / "m").mkdir(parents=True)
        (folder / "m" / "model.safetensors").write_bytes(b"x")
    streaming = store.import_dir(new_id("exp"))  # an old folder whose file is still being written
    (streaming / "m").mkdir(parents=True)
    (streaming / "m" / "model.safetensors").write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    for folder in (old_upload, old_export, hub_import.parent, streaming):
        for path in (folder, *folder.rglob("*")):
            if path != streaming / "m" / "model.safetensors":
                os.utime(path, (an_hour_ago, an_hour_ago))

    removed = store.sweep_request_dirs(older_than_seconds=600)
    assert sorted(removed) == sorted([old_upload.name, old_export.name])
    assert not old_upload.exists() and not old_export.exists()
    # In flight elsewhere (by its newest file, not the folder's own mtime); a worker's job.
    assert fresh_export.is_dir() and streaming.is_dir() and hub_import.is_dir()
