"""Push to the Hub with real processes (uvicorn, a Celery worker, PostgreSQL, Redis) against the Hub stand-in
(tests/hubstandin.py, the one stand-in allowed: the real Hub cannot be reached from the test machines).

A tiny classifier is trained with a job `push` (the server's token, into its namespace), then pushed again with
a request's token, then with a token the Hub refuses, then to an endpoint that no longer listens. The stand-in
saw the repo creations (private flag), the uploaded files (weights, tokenizer, config, card) and the card text;
the refused and unreachable pushes fail saying so; neither token appears in any log line (API, worker, the
job processes' logs, at DEBUG), broker message (Redis MONITOR, message bodies decoded), event or response.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import fresh_pg_database
from tests.e2e.test_classification import csv_slice
from tests.hubstandin import HubStandIn
from tests.stack import Stack, free_port
from tests.tinymodels import TINY_BERT

USER_TOKEN = "hf_user_" + secrets.token_hex(16)
SERVER_TOKEN = "hf_server_" + secrets.token_hex(16)
WRONG_TOKEN = "hf_wrong_" + secrets.token_hex(16)
TOKENS = (USER_TOKEN, SERVER_TOKEN, WRONG_TOKEN)
CARD_FILES = {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md"}


class BrokerMonitor:
    """Every command Redis runs while the test does (MONITOR), as Redis prints them (arguments quoted, inner
    quotes escaped), from a thread. Raw lines: Redis is shared, and redis-py's parser trips on some commands."""

    def __init__(self, url: str) -> None:
        self.commands: list[str] = []
        self._stopped = threading.Event()
        # No read timeout: redis-py's default (5 s) drops the connection in a quiet moment.
        self._monitor = redis.Redis.from_url(url, socket_timeout=None).monitor()
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._listen, name="redis-monitor", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        connection = self._monitor.connection
        while not self._stopped.is_set():
            try:
                line = connection.read_response()
            except (OSError, ValueError, AttributeError, redis.RedisError):
                if self._stopped.is_set():
                    return  # the connection was closed by stop()
                raise
            self.commands.append(line.decode(errors="replace") if isinstance(line, bytes) else str(line))

    def stop(self) -> None:
        self._stopped.set()
        self._monitor.connection.disconnect()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def hub() -> Iterator[HubStandIn]:
    with HubStandIn(tokens={USER_TOKEN, SERVER_TOKEN}) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, hf_home: Path, redis_url: str, hub: HubStandIn
          ) -> Iterator[Stack]:
    with fresh_pg_database() as url, Stack(
        data_dir=tmp_path_factory.mktemp("push"),
        env={"FTSERVE_DATABASE_URL": url, "FTSERVE_BROKER_URL": redis_url, "FTSERVE_QUEUE": f"push_{free_port()}",
             "FTSERVE_HF_ENDPOINT": hub.url, "FTSERVE_HF_TOKEN": SERVER_TOKEN,
             "FTSERVE_HF_PUSH_NAMESPACES": "ftserve-org", "FTSERVE_LOG_LEVEL": "DEBUG",
             # Downloads stay offline (the tiny models are cached); a push goes online regardless.
             "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
             # The stand-in speaks the regular commit + LFS protocol, not Xet (see tests/hubstandin.py).
             "HF_HUB_DISABLE_XET": "1"},
    ) as s:
        yield s


def wait_push(stack: Stack, path: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        push = stack.client.get(path).json()
        if push["status"] in ("succeeded", "failed"):
            return push
        assert time.monotonic() < deadline, f"{path} still {push['status']}\n{stack.logs('worker')}"
        time.sleep(0.3)


def test_push_to_the_hub(stack: Stack, hub: HubStandIn, shared_data: Path, redis_url: str) -> None:
    broker = BrokerMonitor(redis_url)
    ds = stack.upload(content=csv_slice(shared_data / "classification" / "train.csv", 120),
                      filename="reviews.csv").json()["id"]
    r = stack.client.post("/jobs", json={
        "task": "classification", "base_model": TINY_BERT, "dataset": {"id": ds}, "model_name": "sent",
        "hyperparameters": {"max_steps": 2, "batch_size": 8},
        "push": {"repo_id": "ftserve-org/sent-auto", "private": False}})
    assert r.status_code == 201, r.text
    train = stack.wait_job(r.json()["id"], timeout=180)
    assert train["status"] == "succeeded", train["error"]
    pushes = "/models/sent/versions/1/pushes"
    folder = stack.data_dir / "models" / "sent" / "1"

    # 1. The job's push: the server's token, public as asked, once the version is registered.
    train_events = stack.events(train["id"])
    [queued] = [e for e in train_events if "push_id" in (e["data"] or {})]
    # Queued with the version, in its transaction: before the job's final status event.
    assert queued["id"] < max(e["id"] for e in train_events if (e["data"] or {}).get("status") == "succeeded")
    auto = wait_push(stack, f"{pushes}/{queued['data']['push_id']}")
    assert auto["status"] == "succeeded", auto["error"]
    assert hub.repos["ftserve-org/sent-auto"].private is False

    # 2. A request's push with its own token: private by default; the version's files, card included.
    r = stack.client.post("/models/sent/versions/1/push", json={"repo_id": "alice-hub/sent", "token": USER_TOKEN})
    assert r.status_code == 202, r.text
    mine = wait_push(stack, f"{pushes}/{r.json()['id']}")
    assert mine["status"] == "succeeded", mine["error"]
    [create] = [c for c in hub.calls("POST", "/api/repos/create") if json.loads(c.body)["name"] == "sent"]
    assert json.loads(create.body) == {"name": "sent", "organization": "alice-hub", "visibility": "private",
                                       "type": "model"}
    assert create.headers["authorization"] == f"Bearer {USER_TOKEN}"  # it reached the Hub, and only the Hub
    files = hub.files("alice-hub/sent")
    assert set(files) >= CARD_FILES and set(files) - {".gitattributes"} == {p.name for p in folder.iterdir()}
    assert files["README.md"] == (folder / "README.md").read_bytes()
    assert files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    [commit] = hub.repos["alice-hub/sent"].commits
    assert (mine["commit"], mine["url"]) == (commit["oid"], f"{hub.url}/alice-hub/sent/commit/{commit['oid']}")
    assert commit["summary"] == "Upload sent:1 from ftserve"
    assert hub.unhandled == []

    # 3. A token the Hub refuses: failed, with the Hub's message.
    r = stack.client.post("/models/sent/versions/1/push", json={"repo_id": "alice-hub/other", "token": WRONG_TOKEN})
    refused = wait_push(stack, f"{pushes}/{r.json()['id']}")
    assert refused["status"] == "failed" and refused["error"]["type"] == "user"
    assert "refused the token (401)" in refused["error"]["message"]
    assert "Invalid credentials in Authorization header" in refused["error"]["message"]

    # 4. An endpoint that no longer listens: failed, saying it could not be reached.
    hub.close()
    r = stack.client.post("/models/sent/versions/1/push", json={"repo_id": "alice-hub/sent", "token": USER_TOKEN})
    lost = wait_push(stack, f"{pushes}/{r.json()['id']}", timeout=60)
    assert lost["status"] == "failed" and lost["error"]["type"] == "user"
    assert f"could not reach the Hub at {hub.url.removeprefix('http://')}" in lost["error"]["message"]
    broker.stop()

    # No token anywhere but the Hub: responses, events, logs, broker messages.
    push_ids = [auto["id"], mine["id"], refused["id"], lost["id"]]
    shown = [stack.client.get(pushes).text, stack.client.get("/jobs", params={"kind": "push"}).text,
             stack.client.get(f"/jobs/{train['id']}").text, json.dumps(stack.events(train["id"]))]
    for push_id in push_ids:
        shown += [stack.client.get(f"{pushes}/{push_id}").text, stack.client.get(f"/jobs/{push_id}").text,
                  json.dumps(stack.events(push_id))]
    logs = {p: p.read_text(errors="replace") for p in stack.data_dir.rglob("*.log")}
    assert any(f"push {mine['id']}" in text for text in logs.values())  # the push process's own log is read
    queue = stack.env["FTSERVE_QUEUE"]
    messages = [c for c in broker.commands if f'"LPUSH" "{queue}' in c or f'"lpush" "{queue}' in c]
    bodies = [base64.b64decode(m.group(1)).decode() for c in messages
              if (m := re.search(r'body\\?": \\?"([A-Za-z0-9+/=]+)', c))]
    assert len(bodies) == len(messages) >= len(push_ids) + 1
    assert {json.loads(b)[0][0] for b in bodies} >= {*push_ids, train["id"]}  # a message carries a job id
    for token in TOKENS:
        assert not any(token in text for text in shown), token
        assert not [p.name for p, text in logs.items() if token in text], token
        assert not any(token in text for text in messages + bodies), token
