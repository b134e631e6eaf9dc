from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import ValidationFailed
from registry.datafiles import read_table
from registry.store import ArtifactStore, safe_file_name


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_formats(tmp_path: Path) -> None:
    t = read_table(write(tmp_path, "a.csv", b'text,label\n"hello, world",1\nbye,0\n'))
    assert t.columns == ["text", "label"] and t.rows[0] == {"text": "hello, world", "label": "1"}
    t = read_table(write(tmp_path, "a.jsonl", b'{"q": "a", "n": 1}\n\n{"q": "b", "m": 2}\n'))
    assert t.columns == ["q", "n", "m"] and len(t.rows) == 2
    t = read_table(write(tmp_path, "a.json", json.dumps([{"x": 1}, {"x": 2}]).encode()))
    assert t.rows == [{"x": 1}, {"x": 2}]
    t = read_table(write(tmp_path, "a.txt", b"First doc\nline two\n\n\nSecond doc\n"))
    assert t.columns == ["text"] and [r["text"] for r in t.rows] == ["First doc\nline two", "Second doc"]
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1]}), tmp_path / "a.parquet")
    assert read_table(tmp_path / "a.parquet").rows[1] == {"text": "b", "label": 1}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("e.csv", b"", "empty"),
        ("e.jsonl", b"\n\n", "no data rows"),
        ("bad.csv", b"text,label\n\xff\xfe,1\n", "UTF-8"),
        ("bad.jsonl", b'{"a": 1}\n[1, 2]\n', "line 2: expected a JSON object"),
        ("bad2.jsonl", b'{"a": 1}\n{"a": \n', "line 2: invalid JSON"),
        ("dup.csv", b"a,a\n1,2\n", "duplicate"),
        ("bad.parquet", b"not parquet", "Parquet"),
    ],
)
def test_errors_name_the_problem(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        read_table(write(tmp_path, name, content))


def test_user_names_never_escape_the_data_dir(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert safe_file_name("../../etc/passwd") == "passwd"
    assert safe_file_name("..") == "upload.."
    assert store.dataset_file("ds_abc", "../../x.csv").parent == tmp_path / "datasets" / "ds_abc"
    for bad in ("../x", "DS_ABC", "ds/abc", ""):
        with pytest.raises(ValidationFailed):
            store.dataset_dir(bad)
    with pytest.raises(ValidationFailed):
        store.model_dir("../evil")
