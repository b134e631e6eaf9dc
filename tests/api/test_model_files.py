"""Model archives in and out, compare, and deleting versions and models — in process (TestClient on SQLite).

Every hostile archive is a 422 (or 413) in the error shape that names the problem, and leaves nothing behind:
no file outside the data dir (the whole temp tree is compared before and after), no staging folder, no model
row. A good archive is served at once with the scores a plain transformers forward of its folder gives.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from registry.db import session_scope
from registry.models import Job, ModelAlias, ModelVersion, RegisteredModel
from tests.api.test_bounded_input import err, healthy
from tests.tinymodels import save_tiny_classifier

TEXTS = ["a great film", "dull and bad"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny_classifier") / "model")


@pytest.fixture
def api(make_api: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setattr("api.routes.jobs.send_job", lambda job_id: None)
    return make_api(FTSERVE_MAX_IMPORT_MEMBERS="50", FTSERVE_MAX_IMPORT_BYTES=str(4 * 1024 * 1024))


def tar_of(folder: Path, *, prefix: str = "model", skip: tuple[str, ...] = (),
           extra: Callable[[tarfile.TarFile], None] | None = None, mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for path in sorted(folder.iterdir()):
            if path.name not in skip:
                tar.add(path, arcname=f"{prefix}/{path.name}" if prefix else path.name)
        if extra is not None:
            extra(tar)
    return buf.getvalue()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes = b"x", **attrs: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if attrs.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.size else None)


def send(api: TestClient, name: str, data: bytes, *, filename: str = "m.tar.gz", task: str | None = None,
         headers: dict[str, str] | None = None) -> Any:
    return api.post(f"/models/{name}/versions", files={"file": (filename, data)},
                    data={"task": task} if task else None, headers=headers or {})


def tree(root: Path, *, but: Path) -> set[str]:
    """Every path under `root` except those under `but` (the data dir)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if but not in (p, *p.parents)}


def nothing_kept(tmp_path: Path, name: str, before: set[str]) -> None:
    data = tmp_path / "data"
    assert tree(tmp_path, but=data) == before, "an import wrote outside the data dir"
    imports = data / "imports"
    assert not imports.exists() or not any(imports.iterdir()), "an import left its staging folder"
    assert not (data / "models" / name).exists()
    with session_scope() as s:
        assert s.get(RegisteredModel, name) is None


def reference_scores(folder: Path, texts: list[str]) -> list[list[float]]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    out = []
    with torch.inference_mode():
        for text in texts:
            out.append(torch.softmax(model(**tok(text, return_tensors="pt")).logits[0], -1).tolist())
    return out


def test_an_imported_archive_is_served_at_once(api: TestClient, tiny_dir: Path, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    data = tar_of(tiny_dir)
    r = send(api, "imported", data)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["ref"] == "imported:1" and body["task"] == "classification" and body["base_model"] == "import"
    assert body["base_model_resolved"].startswith("import:") and len(body["base_model_resolved"]) == 7 + 64
    assert api.get("/models/imported/versions/1").json() == body
    folder = tmp_path / "data" / "models" / "imported" / "1"
    params = json.loads((folder / "training_params.json").read_text())
    assert params["task"] == "classification"
    assert params["serving"] == {"labels": ["negative", "positive"], "max_length": 64}
    card = ModelCard.load(folder / "README.md")
    assert card.data.tags == ["ftserve", "classification", "imported"]
    assert card.data.pipeline_tag == "text-classification" and card.data.license == "other"
    with session_scope() as s:
        lineage = s.get(ModelVersion, ("imported", 1)).lineage  # type: ignore[union-attr]
    assert lineage == {"source": "imported", "job_id": None, "base_model": None,
                       "archive_sha256": body["base_model_resolved"].removeprefix("import:"), "license": "other"}
    assert body["license"] == "other"

    r = api.post("/classify", json={"model": "imported", "inputs": TEXTS, "top_k": None})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "imported:1"
    for preds, ref in zip(r.json()["predictions"], reference_scores(tiny_dir, TEXTS), strict=True):
        by_label = {p["label"]: p["score"] for p in preds}
        assert by_label["negative"] == pytest.approx(ref[0], abs=1e-5)
        assert by_label["positive"] == pytest.approx(ref[1], abs=1e-5)

    # A second import is the next version; a zip at the root (no top folder) works as well.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in tiny_dir.iterdir():
            zf.write(path, arcname=path.name)
    r = send(api, "imported", buf.getvalue(), filename="m.zip", task="classification")
    assert r.status_code == 201 and r.json()["version"] == 2, r.text
    assert not any((tmp_path / "data" / "imports").iterdir())


def test_an_export_is_the_version_folder(api: TestClient, tiny_dir: Path) -> None:
    assert send(api, "exp", tar_of(tiny_dir)).status_code == 201
    r = api.get("/models/exp/versions/1/archive")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/gzip"
    assert r.headers["content-disposition"] == 'attachment; filename="exp-1.tar.gz"'
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {f"exp-1/{n}" for n in ("config.json", "model.safetensors", "tokenizer.json",
                                                       "tokenizer_config.json", "training_params.json",
                                                       "README.md")}
        assert all(m.isreg() and m.uid == 0 for m in members.values())
        weights = tar.extractfile(members["exp-1/model.safetensors"]).read()  # type: ignore[union-attr]
    assert weights == (tiny_dir / "model.safetensors").read_bytes()
    # Exported, then imported again: the same files serve the same scores.
    assert send(api, "again", r.content).status_code == 201
    a = api.post("/classify", json={"model": "exp", "inputs": TEXTS, "top_k": None}).json()["predictions"]
    b = api.post("/classify", json={"model": "again", "inputs": TEXTS, "top_k": None}).json()["predictions"]
    assert a == b
    err(api.get("/models/exp/versions/9/archive"), 404, "not_found")


def _symlink(tar: tarfile.TarFile) -> None:
    add_bytes(tar, "model/evil", type=tarfile.SYMTYPE, linkname="/etc/passwd")


def _hardlink(tar: tarfile.TarFile) -> None:
    add_bytes(tar, "model/evil", type=tarfile.LNKTYPE, linkname="model/config.json")


REFUSED: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "dotdot": (lambda d: tar_of(d, extra=lambda t: add_bytes(t, "model/../../escaped.txt")), "'..'"),
    "absolute": (lambda d: tar_of(d, extra=lambda t: add_bytes(t, "/tmp/ftserve-escaped.txt")), "absolute path"),
    "symlink": (lambda d: tar_of(d, extra=_symlink), "symbolic link"),
    "hardlink": (lambda d: tar_of(d, extra=_hardlink), "hard link"),
    "device": (lambda d: tar_of(d, extra=lambda t: add_bytes(t, "model/dev", type=tarfile.CHRTYPE)), "device"),
    "fifo": (lambda d: tar_of(d, extra=lambda t: add_bytes(t, "model/fifo", type=tarfile.FIFOTYPE)), "fifo"),
    "pickle": (lambda d: tar_of(d, extra=lambda t: add_bytes(t, "model/pytorch_model.bin", b"\x80\x04.")),
               "pickle checkpoint (.bin)"),
    "no tokenizer": (lambda d: tar_of(d, skip=("tokenizer.json", "tokenizer_config.json")), "no tokenizer"),
    "no config": (lambda d: tar_of(d, skip=("config.json",)), "no config.json"),
    "no weights": (lambda d: tar_of(d, skip=("model.safetensors",)), "no safetensors weights"),
    "bad weights": (lambda d: tar_of(d, skip=("model.safetensors",), extra=lambda t: add_bytes(
        t, "model/model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00not json")), "not a safetensors file"),
    "two folders": (lambda d: tar_of(d, extra=lambda t: add_bytes(t, "other/x.txt")), "no config.json"),
    "duplicate": (lambda d: tar_of(d, extra=lambda t: add_bytes(t, "model/config.json", b"{}")), "appears twice"),
    "too many members": (lambda d: tar_of(d, extra=lambda t: [add_bytes(t, f"model/f{i}") for i in range(60)]),
                         "more than 50 members"),
    "not a tar": (lambda d: b"this is not an archive", "not a readable tar file"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_hostile_or_incomplete_archive_is_refused(api: TestClient, tiny_dir: Path, tmp_path: Path,
                                                    case: str) -> None:
    build, says = REFUSED[case]
    before = tree(tmp_path, but=tmp_path / "data")
    message = err(send(api, "victim", build(tiny_dir)), 422, "validation_error")
    assert says in message
    assert str(tmp_path) not in message  # never a server path
    nothing_kept(tmp_path, "victim", before)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/ftserve-escaped.txt").exists()
    healthy(api)


def test_zip_links_and_task_mismatch_are_refused(api: TestClient, tiny_dir: Path, tmp_path: Path) -> None:
    before = tree(tmp_path, but=tmp_path / "data")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in tiny_dir.iterdir():
            zf.write(path, arcname=f"m/{path.name}")
        link = zipfile.ZipInfo("m/evil")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    assert "symbolic link" in err(send(api, "victim", buf.getvalue(), filename="m.zip"), 422, "validation_error")
    message = err(send(api, "victim", tar_of(tiny_dir), task="generation"), 422, "validation_error")
    assert "task 'generation' does not match" in message and "BertForSequenceClassification" in message
    assert "not one of" in err(send(api, "victim", tar_of(tiny_dir), task="nope"), 422, "validation_error")
    assert "not an archive" in err(send(api, "victim", b"a,b\n", filename="x.csv"), 422, "validation_error")
    assert "file" in err(api.post("/models/victim/versions", json={"file": "x"}), 422, "validation_error")
    assert "multipart" in err(api.post("/models/victim/versions", content=b"x", headers={"content-type": "text/plain"}),
                              422, "validation_error")
    assert "invalid model name" in err(send(api, "Bad!", tar_of(tiny_dir)), 422, "validation_error")
    nothing_kept(tmp_path, "victim", before)


def test_training_params_are_checked(api: TestClient, tiny_dir: Path, tmp_path: Path) -> None:
    def with_params(params: Any) -> bytes:
        return tar_of(tiny_dir, extra=lambda t: add_bytes(t, "model/training_params.json",
                                                          json.dumps(params).encode()))

    assert "says task 'generation'" in err(send(api, "p", with_params({"task": "generation"})), 422,
                                           "validation_error")
    assert "serving.max_length" in err(send(api, "p", with_params({"serving": {"max_length": "long"}})), 422,
                                       "validation_error")
    # An adapter's params would serve it on whatever base they name (another owner's private version included).
    assert "'adapter' marks a LoRA adapter" in err(send(api, "p", with_params(
        {"adapter": {"base": {"resolved": "model:victim:1"}}})), 422, "validation_error")
    r = send(api, "p", with_params({"task": "classification", "serving": {"max_length": 32}, "license": "mit",
                                    "hyperparameters": {"learning_rate": 1e-4}, "method": "full", "adapter": None}))
    assert r.status_code == 201, r.text
    assert r.json()["hyperparameters"] == {"learning_rate": 1e-4}
    folder = tmp_path / "data" / "models" / "p" / "1"
    assert json.loads((folder / "training_params.json").read_text())["serving"] == {
        "labels": ["negative", "positive"], "max_length": 32}
    assert "license: mit" in (folder / "README.md").read_text()


def test_over_the_byte_caps_is_413(make_api: Callable[..., TestClient], tiny_dir: Path, tmp_path: Path) -> None:
    api = make_api(FTSERVE_MAX_IMPORT_BYTES="60000")
    before = tree(tmp_path, but=tmp_path / "data")
    big = tar_of(tiny_dir, extra=lambda t: add_bytes(t, "model/noise.txt", os.urandom(100_000)))
    assert len(big) > 60000
    assert "FTSERVE_MAX_IMPORT_BYTES" in err(send(api, "big", big), 413, "payload_too_large")
    # Small as sent, large unpacked (zeros compress 1000x): counted as it unpacks.
    bomb = tar_of(tiny_dir, skip=("model.safetensors",),
                  extra=lambda t: add_bytes(t, "model/zeros.txt", bytes(10_000_000)))
    assert len(bomb) < 60000
    assert "unpacks to more than" in err(send(api, "big", bomb), 413, "payload_too_large")
    nothing_kept(tmp_path, "big", before)


# -- compare and delete, on registered rows ----------------------------------------------------------------

def add_version(name: str, version: int, *, owner: str = "default", metrics: dict[str, float] | None = None,
                hyperparameters: dict[str, Any] | None = None, base: str = "hub:b", files: Path | None = None
                ) -> None:
    with session_scope() as s:
        if s.get(RegisteredModel, name) is None:
            s.add(RegisteredModel(name=name, task="classification", owner=owner))
            s.flush()
        path = files / "models" / name / str(version) if files else Path(f"/nonexistent/{name}/{version}")
        if files:
            path.mkdir(parents=True)
            (path / "config.json").write_text("{}")
        s.add(ModelVersion(name=name, version=version, task="classification", owner=owner, base_model="b",
                           base_model_resolved=base, metrics=metrics or {}, hyperparameters=hyperparameters or {},
                           path=str(path)))


def test_compare_shapes(api: TestClient) -> None:
    add_version("cmp", 1, metrics={"accuracy": 0.5, "f1_macro": 0.4},
                hyperparameters={"learning_rate": 5e-5, "epochs": 3, "seed": 42})
    add_version("cmp", 2, metrics={"accuracy": 0.75, "eval_loss": 0.3},
                hyperparameters={"learning_rate": 1e-4, "epochs": 3, "seed": 42, "warmup_steps": 10})
    r = api.get("/models/cmp/compare", params={"versions": "2,1"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "versions": [2, 1],
        "metrics": {"accuracy": {"2": 0.75, "1": 0.5}, "eval_loss": {"2": 0.3, "1": None},
                    "f1_macro": {"2": None, "1": 0.4}},
        "hyperparameters_differ": {"learning_rate": {"2": 1e-4, "1": 5e-5}, "warmup_steps": {"2": 10, "1": None}},
    }
    for bad in ("1", "1,1", "a,b", "1,,2", "0,1", ",".join(str(i) for i in range(1, 12)), "1,99999999999"):
        err(api.get("/models/cmp/compare", params={"versions": bad}), 422, "validation_error")
    err(api.get("/models/cmp/compare"), 422, "validation_error")
    assert "no version 3" in err(api.get("/models/cmp/compare", params={"versions": "1,3"}), 404, "not_found")
    err(api.get("/models/nope/compare", params={"versions": "1,2"}), 404, "not_found")


def test_delete_a_version(api: TestClient, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for v in (1, 2, 3):
        add_version("del", v, files=data)
    add_version("child", 1, base="model:del:2", files=data)
    with session_scope() as s:
        s.add(ModelAlias(name="del", alias="production", version=1))
        s.add(Job(id="job_active", owner="default", status="queued", task="classification", spec={},
                  model_name="other", base_model_resolved="model:del:3"))

    assert "alias 'production' points at version 1" in err(api.delete("/models/del/versions/1"), 409, "conflict")
    assert "child:1 was trained from del:2" in err(api.delete("/models/del/versions/2"), 409, "conflict")
    assert "job 'job_active' (queued)" in err(api.delete("/models/del/versions/3"), 409, "conflict")
    assert (data / "models" / "del" / "3").is_dir()

    with session_scope() as s:
        s.get(Job, "job_active").status = "failed"  # type: ignore[union-attr]
    assert api.delete("/models/del/versions/3").status_code == 204
    assert not (data / "models" / "del" / "3").exists()
    err(api.get("/models/del/versions/3"), 404, "not_found")
    err(api.delete("/models/del/versions/3"), 404, "not_found")
    err(api.get("/models/del/versions/3/archive"), 404, "not_found")
    err(api.put("/models/del/aliases/x", json={"version": 3}), 404, "not_found")
    err(api.post("/classify", json={"model": "del:3", "inputs": ["x"]}), 404, "not_found")
    assert [v["version"] for v in api.get("/models/del").json()["versions"]] == [2, 1]
    assert api.get("/models/del").json()["latest_version"] == 2
    with session_scope() as s:
        from registry import versions

        assert versions.next_version(s, "del") == 4  # the deleted number is never reused
        assert versions.resolve(s, "del").version == 1  # production
        s.delete(s.get(ModelAlias, ("del", "production")))
        s.flush()
        assert versions.resolve(s, "del").version == 2  # the newest that is not deleted


def test_delete_a_model(api: TestClient, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for v in (1, 2):
        add_version("whole", v, files=data)
    with session_scope() as s:
        s.add(ModelAlias(name="whole", alias="production", version=2))
    message = err(api.delete("/models/whole"), 409, "conflict")
    assert "production" in message and "force=true" in message
    add_version("built", 1, base="model:whole:1", files=data)
    assert "built:1 was trained from whole:1" in err(api.delete("/models/whole", params={"force": "true"}), 409,
                                                      "conflict")
    assert api.delete("/models/built/versions/1").status_code == 204
    assert api.delete("/models/whole", params={"force": "true"}).status_code == 204
    assert not (data / "models" / "whole" / "1").exists() and not (data / "models" / "whole" / "2").exists()
    # The name stays its owner's, with no versions, and numbers go on.
    got = api.get("/models/whole").json()
    assert got["versions"] == [] and got["aliases"] == {} and got["latest_version"] is None
    err(api.post("/classify", json={"model": "whole", "inputs": ["x"]}), 404, "not_found")
    with session_scope() as s:
        from registry import versions

        assert versions.next_version(s, "whole") == 3
    err(api.delete("/models/nope"), 404, "not_found")


@pytest.mark.parametrize(("body", "field"), [
    ({"hub": "/etc"}, "hub"), ({"hub": "../x"}, "hub"), ({"hub": "org/name", "revision": "../../x"}, "revision"),
    ({"hub": "org/name", "task": "translation"}, "task"), ({"hub": "org/name", "token": "x"}, "token"),
    ({"hub": "o/" + "n" * 200}, "hub"),
])
def test_hub_import_bodies_are_checked(api: TestClient, body: dict[str, Any], field: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    monkeypatch.setattr("api.routes.jobs.send_job", sent.append)
    assert field in err(api.post("/models/fromhub/versions", json=body), 422, "validation_error")
    assert sent == []


def test_a_hub_import_is_a_queued_import_job(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    monkeypatch.setattr("api.routes.jobs.send_job", sent.append)
    r = api.post("/models/fromhub/versions", json={"hub": "org/squad-bert", "revision": "v1.0",
                                                   "task": "question-answering"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["kind"], job["status"], job["model_name"], job["task"]) == (
        "import", "queued", "fromhub", "question-answering")
    assert sent == [job["id"]]
    assert [j["id"] for j in api.get("/jobs", params={"kind": "import"}).json()["data"]] == [job["id"]]
    assert api.get("/jobs", params={"kind": "train"}).json()["data"] == []
