"""Import a Hub model without training it: `POST /models/{name}/versions` `{"hub": …}` is a job of kind
"import" run by a real worker; with the Hub offline (as on these machines) it takes the cached snapshot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_question_answering import brute_force_answer, jsonl_slice
from tests.stack import Stack

QA_REPO = "ftserve-test/tiny-bert-squad"
PICKLE_REPO = "ftserve-test/pickled-bert"
REPO = Path(__file__).resolve().parents[2]

BUILD = """
import sys, tempfile
from pathlib import Path
import torch
from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering
from huggingface_hub import snapshot_download
from core.hfcache import place_in_cache
from tests.tinymodels import TINY_BERT, cache_model
home = Path(sys.argv[1])
base = snapshot_download(TINY_BERT, local_files_only=True, cache_dir=home / "hub")
tok = AutoTokenizer.from_pretrained(base)
config = BertConfig.from_pretrained(base)
cache_model(home, sys.argv[2], tok, lambda: BertForQuestionAnswering(config))
with tempfile.TemporaryDirectory() as tmp:
    config.save_pretrained(tmp)
    torch.save({"w": torch.zeros(2)}, Path(tmp) / "pytorch_model.bin")
    place_in_cache(Path(tmp), hf_home=home, repo_id=sys.argv[3])
"""


def test_a_cached_hub_qa_model_is_imported_and_served(pg_stack: Stack, hf_home: Path, shared_data: Path) -> None:
    subprocess.run([sys.executable, "-c", BUILD, str(hf_home), QA_REPO, PICKLE_REPO], check=True, cwd=REPO,
                   env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    r = pg_stack.client.post("/models/hubsquad/versions", json={"hub": QA_REPO, "task": "question-answering"})
    assert r.status_code == 202, r.text
    queued = r.json()
    assert queued["kind"] == "import" and queued["status"] == "queued"
    job = pg_stack.wait_job(queued["id"])
    assert job["status"] == "succeeded", (job["error"], pg_stack.logs("worker"))
    assert job["model"]["ref"] == "hubsquad:1"
    assert job["result"]["hub"]["from"] == "cache"
    version = pg_stack.client.get("/models/hubsquad/versions/1").json()
    assert version["task"] == "question-answering"
    snapshots = list((hf_home / "hub" / "models--ftserve-test--tiny-bert-squad" / "snapshots").iterdir())
    assert version["lineage"]["source"] == "imported" and version["lineage"]["base_revision"] == snapshots[0].name
    model_dir = pg_stack.data_dir / "models" / "hubsquad" / "1"
    assert not any(p.is_symlink() for p in model_dir.iterdir())  # plain files, not links into the cache
    assert (model_dir / "README.md").is_file()

    item = jsonl_slice(shared_data / "qa" / "validation.jsonl", 1)[0]
    got = pg_stack.client.post("/answer", json={"model": "hubsquad", "question": item["question"],
                                                "context": item["context"]})
    assert got.status_code == 200, got.text
    answer = got.json()["answers"][0]
    text, _, start, end = brute_force_answer(model_dir, item["question"], item["context"])
    assert (answer["answer"], answer["start"], answer["end"]) == (text, start, end)

    # Exported and imported under another name, the QA model answers with the same spans.
    archive = pg_stack.client.get("/models/hubsquad/versions/1/archive")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/gzip"
    r = pg_stack.client.post("/models/squad-copy/versions", files={"file": ("hubsquad-1.tar.gz", archive.content)})
    assert r.status_code == 201, r.text
    assert (r.json()["task"], r.json()["lineage"]["source"]) == ("question-answering", "imported")
    items = [{"question": row["question"], "context": row["context"]}
             for row in jsonl_slice(shared_data / "qa" / "validation.jsonl", 4)]
    spans = [[(a["answer"], a["start"], a["end"]) for a in pg_stack.client.post(
        "/answer", json={"model": model, "inputs": items}).json()["answers"]] for model in ("hubsquad", "squad-copy")]
    assert spans[0] == spans[1] and len(spans[0]) == 4

    # Not cached, Hub offline: the job fails saying both; a pickle-only repo is refused, saying so.
    for repo, expected in (("ftserve-test/never-cached", "not in this server's cache"),
                           (PICKLE_REPO, "pickle formats are never loaded")):
        r = pg_stack.client.post("/models/hubfail/versions", json={"hub": repo, "task": "question-answering"})
        assert r.status_code == 202, r.text
        failed = pg_stack.wait_job(r.json()["id"])
        assert failed["status"] == "failed" and failed["error"]["type"] == "user", failed
        assert expected in failed["error"]["message"], failed["error"]
        assert "/" + str(hf_home).strip("/") not in failed["error"]["message"]
    assert pg_stack.client.get("/models/hubfail").status_code == 404
    assert json.dumps(pg_stack.client.get("/jobs", params={"kind": "import"}).json()).count('"kind": "import"') == 3
