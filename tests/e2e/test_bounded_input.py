"""Bounded input against a real uvicorn process: bodies cut off while they stream, and the Parquet "bomb" (a
few KB that decompress to gigabytes) read without the API's memory growing. Nothing is written outside the data
dir, and the API answers /healthz afterwards."""

from __future__ import annotations

import io
import json
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.stack import Stack

UPLOAD_CAP = 4 * 1024 * 1024
BOUNDARY = "ftserveboundary"


@pytest.fixture(scope="module")
def tmpdir_outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api_tmpdir")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tmpdir_outside: Path) -> Iterator[Stack]:
    stack = Stack(
        data_dir=tmp_path_factory.mktemp("bounded"),
        # The dataset caps are the defaults (5M rows, 2 GiB decompressed): the bombs are refused under them.
        env={"FTSERVE_MAX_UPLOAD_BYTES": str(UPLOAD_CAP), "FTSERVE_MAX_BODY_BYTES": "65536", "HF_HUB_OFFLINE": "1",
             # Where a spooled body would go: the tests check it stays empty.
             "TMPDIR": str(tmpdir_outside)},
        workers=0,
    )
    with stack:
        yield stack


def api_pid(stack: Stack) -> int:
    return stack.procs["api"].pid


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def open_files(pid: int, under: Path) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed while we looked
        if target.startswith(str(under)):
            out.append(target)
    return out


def nothing_left(stack: Stack, tmpdir: Path) -> None:
    assert list(tmpdir.iterdir()) == [], "nothing is written outside the data dir"
    datasets = stack.data_dir / "datasets"
    assert not datasets.exists() or [p for p in datasets.rglob("*") if p.is_file()] == [], "no dataset stored"
    r = stack.client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def read_response(sock: socket.socket, *, timeout: float) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.2)
        if not ready:
            continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if length is not None and len(body) >= length:
                return int(head.split()[1]), json.loads(body[:length])
    raise AssertionError(f"no complete response in {timeout}s: {data[:500]!r}")


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def stream_until_answered(stack: Stack, *, path: str, headers: dict[str, str], first: bytes, total: int,
                          watch: Path) -> tuple[int, dict[str, Any], int]:
    """Send a chunked body of `total` bytes, 64 KiB at a time, and stop as soon as the server answers; returns
    (status, body, bytes sent). Fails if the server has a file open under `watch` meanwhile."""
    pid = api_pid(stack)
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock.sendall(head.encode() + chunked(first))
        sent = len(first)
        block = b"x" * 65536
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # answered before the body was all sent
            try:
                sock.sendall(chunked(block))
            except OSError:
                break  # the server closed the connection on us: its answer is waiting
            sent += len(block)
            assert open_files(pid, watch) == [], "the body is being spooled to a file outside the data dir"
        status, body = read_response(sock, timeout=30)
        return status, body, sent
    finally:
        sock.close()


def test_upload_over_the_cap_is_cut_off_while_it_streams(stack: Stack, tmpdir_outside: Path) -> None:
    first = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n"
             "Content-Type: text/csv\r\n\r\ntext,label\n").encode()
    total = 64 * 1024 * 1024
    status, body, sent = stream_until_answered(
        stack, path="/datasets", headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        first=first, total=total, watch=tmpdir_outside)
    assert status == 413 and body["error"]["type"] == "payload_too_large", body
    assert sent < total // 2, f"the server read {sent} bytes before answering"
    nothing_left(stack, tmpdir_outside)


def test_json_body_over_the_cap_is_cut_off_while_it_streams(stack: Stack, tmpdir_outside: Path) -> None:
    status, body, sent = stream_until_answered(
        stack, path="/jobs", headers={"Content-Type": "application/json"}, first=b'{"task": "',
        total=16 * 1024 * 1024, watch=tmpdir_outside)
    assert status == 413 and body["error"]["type"] == "payload_too_large", body
    assert sent < 8 * 1024 * 1024
    nothing_left(stack, tmpdir_outside)


def test_declared_content_length_over_the_cap_is_refused_at_once(stack: Stack, tmpdir_outside: Path) -> None:
    for path, ctype in (("/datasets", f"multipart/form-data; boundary={BOUNDARY}"), ("/jobs", "application/json")):
        with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {300 * 1024 * 1024}\r\n\r\n".encode())
            t0 = time.monotonic()
            status, body = read_response(sock, timeout=10)  # not a byte of the body was sent
            assert status == 413 and body["error"]["type"] == "payload_too_large", body
            assert "314572800 bytes" in body["error"]["message"] and time.monotonic() - t0 < 5
    nothing_left(stack, tmpdir_outside)


def parquet(table: pa.Table, **kw: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", compression_level=22, **kw)
    return buf.getvalue()


def repeated(value: str, rows: int) -> pa.Array:
    """`rows` copies of one string, dictionary-encoded: cheap to build, and written as such."""
    return pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array([value]))


def settled_rss(pid: int, *, timeout: float = 120) -> None:
    """Wait until the API's resident memory stops growing (the warm-up imports torch in the background)."""
    deadline = time.monotonic() + timeout
    last = status_kb(pid, "VmRSS")
    stable_since = time.monotonic()
    while time.monotonic() - stable_since < 3:
        assert time.monotonic() < deadline, "the API's memory did not settle"
        time.sleep(0.5)
        now = status_kb(pid, "VmRSS")
        if abs(now - last) > 2048:
            stable_since = time.monotonic()
        last = now


def test_parquet_bombs_keep_the_api_small(stack: Stack, tmpdir_outside: Path) -> None:
    pid = api_pid(stack)
    settled_rss(pid)
    # pyarrow loaded and its allocator warm, so the baseline is the server's own.
    small = stack.upload(content=parquet(pa.table({"text": ["a", "b"], "label": [0, 1]})), filename="small.parquet")
    assert small.status_code == 201, small.text
    settled_rss(pid)
    before = status_kb(pid, "VmHWM")

    # 8 strings of 52 MiB: 13.5 KB on disk, 436 MB decompressed (under the cap) in one page: a bomb.
    long = parquet(pa.table({"text": ["x" * (52 * 1024 * 1024)] * 8, "label": ["a", "b"] * 4}),
                   use_dictionary=False, write_statistics=False)
    assert len(long) < 20_000
    r = stack.upload(content=long, filename="bomb.parquet")
    assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error", r.text
    assert "decompression bomb" in r.json()["error"]["message"] and "bomb.parquet" in r.json()["error"]["message"]
    del long

    # 1.1 million rows of one 2 KiB string: 5 KB on disk, 2.25 GB decompressed, over the cap; the metadata
    # counts the value once, so the rows are counted as they are read (without being expanded).
    n = 1_100_000
    rows = parquet(pa.table({"text": repeated("y" * 2048, n), "label": repeated("a", n)}), row_group_size=n,
                   write_statistics=False)
    assert len(rows) < 20_000
    r = stack.upload(content=rows, filename="rows.parquet")
    assert r.status_code == 422 and "decompressed" in r.json()["error"]["message"], r.text

    # Under the cap (200 MB decompressed): stored, with a small preview.
    ok = parquet(pa.table({"text": repeated("z" * 20_000, 10_000), "label": pa.array([0, 1] * 5000)}),
                 write_statistics=False)
    r = stack.upload(content=ok, filename="fine.parquet")
    assert r.status_code == 201, r.text
    got = stack.client.get(f"/datasets/{r.json()['id']}")
    assert got.status_code == 200 and got.json()["num_rows"] == 10_000
    assert len(got.content) < 64 * 1024 and len(got.json()["preview"]) == 5

    grown_mb = (status_kb(pid, "VmHWM") - before) / 1024
    print(f"API peak resident memory grew by {grown_mb:.1f} MB over the bombs (VmHWM {before // 1024} MB before)")
    assert grown_mb < 200
    assert list(tmpdir_outside.iterdir()) == []
    assert stack.client.get("/healthz").status_code == 200
