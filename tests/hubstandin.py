"""A local HTTP server that stands in for the Hugging Face Hub API in push tests (the real Hub cannot be reached
from the test machines). It answers what huggingface_hub 2.4's `create_repo`, `create_branch` and `upload_folder`
call, read from the library's source (hf_api.py, _commit_api.py, lfs.py):

- `POST /api/repos/create` `{"name", "organization", "visibility", "type"}` → `{"url"}`, 409 (with `url`) when
  the repo exists; `GET /api/models/{repo}` (create_repo asks it after a 401/403 with `exist_ok`);
- `POST /api/models/{repo}/branch/{branch}` (409 when it exists);
- `POST /api/validate-yaml` (the model card's front matter, checked before a commit);
- `POST /api/models/{repo}/preupload/{revision}` → each file's `uploadMode`: `lfs` for `*.safetensors` and files
  over 10 MB (as the Hub's default `.gitattributes` does), else `regular`;
- `POST /{repo}.git/info/lfs/objects/batch` (basic transfer) → an upload and a verify action per object, then
  `PUT /lfs/{oid}` (the content, checked against its sha256) and `POST /lfs/{oid}/verify`;
- `POST /api/models/{repo}/commit/{revision}` (ndjson: a header, then `file` items in base64 and `lfsFile` items
  naming uploaded objects) → `{"commitUrl", "commitOid"}`.

Xet: with `hf_xet` installed (it is, in .venv) huggingface_hub uploads LFS files through Xet storage, a
content-addressed chunk protocol spoken by a separate CAS service, which this stand-in does not implement.
Processes pushing to it run with `HF_HUB_DISABLE_XET=1`, the library's own switch
(`huggingface_hub.constants.HF_HUB_DISABLE_XET`, read in `utils._runtime.is_xet_available`), so the library takes
its regular commit + LFS path; a request for anything else (a Xet token, say) is a 404 recorded in `unhandled`,
which the tests assert is empty.

Every request is recorded (method, path, headers, body). Tokens: requests must carry `Authorization: Bearer <t>`
for one of `tokens` (401 with the Hub's message otherwise); LFS content PUTs carry none, as with presigned URLs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

LFS_THRESHOLD = 10 * 1024 * 1024
USER = "standin-user"  # the namespace of a bare repo name
INVALID_TOKEN = "Invalid credentials in Authorization header"
_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_ROUTES = [
    ("POST", re.compile(r"/api/repos/create"), "create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
    ("POST", re.compile(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)"), "preupload"),
    ("POST", re.compile(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)"), "commit"),
    ("POST", re.compile(rf"/api/models/{_REPO}/branch/(?P<rev>[^/]+)"), "create_branch"),
    ("GET", re.compile(rf"/api/models/{_REPO}"), "repo_info"),
    ("POST", re.compile(rf"/{_REPO}\.git/info/lfs/objects/batch"), "lfs_batch"),
    ("PUT", re.compile(r"/lfs/(?P<oid>[0-9a-f]{64})"), "lfs_put"),
    ("POST", re.compile(r"/lfs/(?P<oid>[0-9a-f]{64})/verify"), "lfs_verify"),
]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {".gitattributes": b""}})
    commits: list[dict[str, Any]] = field(default_factory=list)


class _Answer(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


class HubStandIn:
    """`with HubStandIn(tokens={"hf_abc"}) as hub:` → `hub.url`; `hub.requests`, `hub.repos`, `hub.unhandled`."""

    def __init__(self, *, tokens: set[str], refuse_message: str = INVALID_TOKEN) -> None:
        self.tokens = tokens
        self.refuse_message = refuse_message
        self.requests: list[Recorded] = []
        self.unhandled: list[str] = []
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> HubStandIn:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # recorded in `requests` instead

            def _any(self) -> None:
                stand_in._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="hub-stand-in", daemon=True).start()
        return self

    def close(self) -> None:
        """Stop listening: the port is then closed, as an unreachable endpoint's is."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what tests read ---------------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id].branches[revision])

    def calls(self, method: str, pattern: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]

    # -- serving -----------------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = _read_body(h)
        raw_path = urlsplit(h.path).path
        with self._lock:
            self.requests.append(Recorded(h.command, raw_path, {k.lower(): v for k, v in h.headers.items()}, body))
        try:
            for method, pattern, name in _ROUTES:
                m = pattern.fullmatch(raw_path)
                if m is not None and method == h.command:
                    if name != "lfs_put":
                        self._check_token(h.headers.get("Authorization"))
                    with self._lock:
                        status, answer = getattr(self, f"_{name}")(
                            {k: unquote(v) for k, v in m.groupdict().items()}, body)
                    break
            else:
                with self._lock:
                    self.unhandled.append(f"{h.command} {raw_path}")
                raise _Answer(404, {"error": f"the Hub stand-in does not implement {h.command} {raw_path}"})
            _send(h, status, answer)
        except _Answer as a:
            _send(h, a.status, a.body, a.headers)

    def _check_token(self, header: str | None) -> None:
        if header is None or not header.startswith("Bearer ") or header[len("Bearer "):] not in self.tokens:
            raise _Answer(401, {"error": self.refuse_message})

    def _repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise _Answer(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return self.repos[repo_id]

    def _branch(self, repo: Repo, rev: str) -> dict[str, bytes]:
        if rev not in repo.branches:
            raise _Answer(404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
        return repo.branches[rev]

    def _create_repo(self, _: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        data = json.loads(body)
        repo_id = f"{data.get('organization') or USER}/{data['name']}"
        if data.get("type", "model") != "model":
            raise _Answer(400, {"error": "the stand-in hosts model repos only"})
        if repo_id in self.repos:
            raise _Answer(409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"})
        self.repos[repo_id] = Repo(private=data.get("visibility") == "private")
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def _repo_info(self, m: dict[str, str], _: bytes) -> tuple[int, dict[str, Any]]:
        repo = self._repo(m["repo"])
        return 200, {"id": m["repo"], "private": repo.private, "sha": _oid()}

    def _validate_yaml(self, _: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        content = json.loads(body).get("content", "")
        if not content.startswith("---\n"):
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
        return 200, {"errors": [], "warnings": []}

    def _create_branch(self, m: dict[str, str], _: bytes) -> tuple[int, dict[str, Any]]:
        repo = self._repo(m["repo"])
        if m["rev"] in repo.branches:
            raise _Answer(409, {"error": f"Reference refs/heads/{m['rev']} already exists"})
        repo.branches[m["rev"]] = dict(repo.branches["main"])
        return 200, {}

    def _preupload(self, m: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        self._branch(self._repo(m["repo"]), m["rev"])
        files = json.loads(body)["files"]
        return 200, {"files": [{"path": f["path"], "shouldIgnore": False,
                                "uploadMode": "lfs" if f["path"].endswith(".safetensors") or f["size"] > LFS_THRESHOLD
                                else "regular"} for f in files]}

    def _lfs_batch(self, m: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        self._repo(m["repo"])
        objects = json.loads(body)["objects"]
        return 200, {"transfer": "basic", "objects": [
            {"oid": o["oid"], "size": o["size"], "authenticated": True,
             "actions": {"upload": {"href": f"{self.url}/lfs/{o['oid']}"},
                         "verify": {"href": f"{self.url}/lfs/{o['oid']}/verify"}}}
            for o in objects]}

    def _lfs_put(self, m: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        if hashlib.sha256(body).hexdigest() != m["oid"]:
            raise _Answer(400, {"error": "content does not match its oid"})
        self.lfs[m["oid"]] = body
        return 200, {}

    def _lfs_verify(self, m: dict[str, str], _: bytes) -> tuple[int, dict[str, Any]]:
        if m["oid"] not in self.lfs:
            raise _Answer(404, {"error": "object not uploaded"})
        return 200, {}

    def _commit(self, m: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        repo = self._repo(m["repo"])
        files = dict(self._branch(repo, m["rev"]))
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]
        assert header["key"] == "header", header
        for item in lines[1:]:
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.lfs:
                    raise _Answer(422, {"error": f"LFS object {value['oid']} of {value['path']} was not uploaded"})
                files[value["path"]] = self.lfs[value["oid"]]
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
            else:
                raise _Answer(400, {"error": f"the stand-in does not implement commit items of kind {item['key']}"})
        oid = _oid()
        repo.branches[m["rev"]] = files
        repo.commits.append({"oid": oid, "revision": m["rev"], "summary": header["value"]["summary"]})
        return 200, {"commitUrl": f"{self.url}/{m['repo']}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}


def _oid() -> str:
    return secrets.token_hex(20)


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(h.rfile.read(size))
            h.rfile.readline()
    length = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(length) if length else b""


def _send(h: BaseHTTPRequestHandler, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for key, value in (headers or {}).items():
        h.send_header(key, value)
    h.end_headers()
    h.wfile.write(data)
