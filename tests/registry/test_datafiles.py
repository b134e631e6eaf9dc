from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import ValidationFailed, scrub_paths
from registry import datafiles
from registry.datafiles import (
    DataFileError,
    DatasetProfile,
    JsonBoundsError,
    Limits,
    json_needs_bounds_check,
    loads_bounded,
    profile_file,
    profile_rows,
    read_table,
)
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


# -- bounded reading -------------------------------------------------------------------------------------------

LIMITS = Limits(max_rows=1000, max_uncompressed_bytes=8 * 1024 * 1024)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("deep.jsonl", b'{"a": 1}\n{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", "line 2: JSON nested deeper than 32"),
        ("deep33.jsonl", b'{"a": ' + b"[" * 32 + b"]" * 32 + b"}\n", "line 1: JSON nested deeper than 32"),
        ("int.jsonl", b'{"a": ' + b"9" * 101 + b"}\n", "line 1: an integer with 101 digits"),
        ("deep.json", b'[{"a": 1},\n {"a": ' + b"{\"b\": " * 40 + b"1" + b"}" * 40 + b"}]", "item 2 \\(line 2\\)"),
        ("int.json", b'[{"a": -' + b"1" * 5000 + b"}]", "item 1 \\(line 1\\): an integer with 5000 digits"),
        ("trailing.json", b'[{"a": 1}] x', "unexpected text after the list"),
        ("unclosed.json", b'[{"a": 1}, {"a": "never closed', "item 2: invalid JSON at line 1"),
        ("many.csv", b"a\n" + b"x\n" * 1001, "the limit is 1000 rows"),
    ],
)
def test_bounds(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    with pytest.raises(DataFileError, match=message) as info:
        read_table(write(tmp_path, name, content), limits=LIMITS)
    assert info.value.message.startswith(f"{name}: ")


def test_json_items_are_read_one_at_a_time_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datafiles, "_READ_CHUNK", 7)  # every item, string and number is cut somewhere
    rows = [{"text": f"row {i} \u00e9\u4e2d" + "x" * i, "n": 12345 + i, "f": 1.5, "ok": True, "none": None}
            for i in range(50)]
    path = write(tmp_path, "a.json", ("\ufeff[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n").encode())
    assert read_table(path, limits=LIMITS).rows == rows
    bad = write(tmp_path, "b.json", b'[{"a": 1},\n{"a": 2}\n{"a": 3}]')
    with pytest.raises(DataFileError, match="item 2: expected ',' or ']' after it"):
        read_table(bad, limits=LIMITS)
    latin = write(tmp_path, "c.json", b'[{"a": "ok"},\n{"a": "caf\xe9"}]')
    with pytest.raises(DataFileError, match="not valid UTF-8 \\(byte 24, line 2\\)"):
        read_table(latin, limits=LIMITS)


def test_parquet_caps_and_messages(tmp_path: Path) -> None:
    # The metadata says 24 MB: refused before a page is decompressed.
    pq.write_table(pa.table({"text": ["x" * 3_000_000] * 8}), tmp_path / "long.parquet", compression="zstd",
                   use_dictionary=False)
    with pytest.raises(DataFileError, match="decompressed \\(its metadata says") as info:
        read_table(tmp_path / "long.parquet", limits=LIMITS)
    assert str(tmp_path) not in info.value.message
    # Dictionary-encoded: the metadata counts one value; the rows are counted without being expanded.
    idx = pa.array([0] * 1000, pa.int32())
    pq.write_table(pa.table({"text": pa.DictionaryArray.from_arrays(idx, pa.array(["y" * 100_000]))}),
                   tmp_path / "rows.parquet", compression="zstd")
    assert (tmp_path / "rows.parquet").stat().st_size < 10_000
    pool = pa.default_memory_pool()
    before = pool.max_memory()
    with pytest.raises(DataFileError, match="decompressed \\(over 8388608 bytes"):
        profile_file(tmp_path / "rows.parquet", limits=LIMITS)
    assert pool.max_memory() - before < 32 * 1024 * 1024
    # Under a large cap, a chunk that expands 30,000x is still refused before it is decompressed.
    with pytest.raises(DataFileError, match=r"column 'text' \(row group 1\) expands from .* decompression bomb"):
        read_table(tmp_path / "long.parquet", limits=Limits(max_rows=1000, max_uncompressed_bytes=2**40))
    write(tmp_path, "bad.parquet", b"PAR1 not parquet PAR1")
    with pytest.raises(DataFileError, match=r"bad\.parquet: not a readable Parquet file") as info:
        read_table(tmp_path / "bad.parquet", limits=LIMITS)
    assert str(tmp_path) not in info.value.message and "/" not in info.value.message


def test_scrub_paths() -> None:
    assert scrub_paths("Could not open '/srv/data/datasets/ds_1/x.parquet': bad") == "Could not open 'x.parquet': bad"
    assert scrub_paths("text/csv and 1/2 stay") == "text/csv and 1/2 stay"


def test_loads_bounded() -> None:
    assert loads_bounded('{"a": [[1, 2], {"b": -123}]}') == {"a": [[1, 2], {"b": -123}]}
    with pytest.raises(JsonBoundsError, match="nested deeper"):
        loads_bounded("[" * 100_000 + "]" * 100_000)
    with pytest.raises(JsonBoundsError, match="digits"):
        loads_bounded("[" + "1" * 200 + "]")
    assert not json_needs_bounds_check(b'{"inputs": ["[x]"], "top_k": 12345}')
    assert json_needs_bounds_check(b"[" * 33) and json_needs_bounds_check(b"1" * 101)


# -- the profile -----------------------------------------------------------------------------------------------

def test_profile_types_counts_and_first_rows(tmp_path: Path) -> None:
    rows = [
        {"text": "good", "label": 1, "score": 0.5, "flag": True, "tags": ["a"], "meta": {"k": 1}},
        {"text": "  ", "label": "1", "score": None, "flag": False, "tags": [], "meta": {}},
        {"text": "bad", "label": 0},
    ]
    path = write(tmp_path, "p.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    profile = profile_file(path, limits=LIMITS)
    assert profile.num_rows == 3 and profile.columns == ["text", "label", "score", "flag", "tags", "meta"]
    assert profile.kinds("text") == {"string": (2, 1), "blank": (1, 2)}
    assert profile.kinds("label") == {"integer": (2, 1), "string": (1, 2)}
    assert profile.kinds("score") == {"float": (1, 1), "null": (2, 2)}  # row 3 has no "score": null too
    assert profile.first_row("text", other_than={"string"}) == (2, "blank")
    assert profile.first_row("label", kinds={"null"}) is None
    assert profile.value_counts("label") == [(0, 1), (1, 1), ("1", 1)]  # 1 and "1" are different values
    assert profile.value_counts("flag") == [(False, 1), (True, 1)]
    assert profile.value_counts("tags") is None and profile.value_counts("meta") is None  # not scalars
    assert profile.column_types() == {"text": ["string"], "label": ["integer", "string"],
                                      "score": ["float", "null"], "flag": ["boolean", "null"],
                                      "tags": ["list", "null"], "meta": ["null", "object"]}
    assert profile.preview[0] == rows[0] and len(profile.preview) == 3
    # It survives the database: only JSON types inside.
    assert DatasetProfile(json.loads(json.dumps(profile.data))).value_counts("label") == [(0, 1), (1, 1), ("1", 1)]


def test_value_counts_stop_at_1000_distinct_and_long_values() -> None:
    rows = [{"id": str(i), "label": ["a", "b", "c"][i % 3], "long": "x" * 300, "num": i % 7} for i in range(1500)]
    profile = profile_rows(rows)
    assert profile.value_counts("id") is None
    assert profile.value_counts("label") == [("a", 500), ("b", 500), ("c", 500)]
    assert profile.value_counts("long") is None
    assert sum(n for _, n in profile.value_counts("num") or []) == 1500
    exactly = profile_rows([{"v": i} for i in range(1000)])
    assert len(exactly.value_counts("v") or []) == 1000


def test_preview_is_bounded(tmp_path: Path) -> None:
    wide = {f"c{i}": "v" * 2000 for i in range(200)}
    profile = profile_rows([wide] * 10)
    assert len(profile.preview) == 5
    assert len(json.dumps(profile.preview).encode()) < 64 * 1024
    assert profile.preview[0]["c0"].startswith("vvv") and profile.preview[0]["c0"].endswith("…")
    table = pa.table({"blob": [b"\x00" * 10, None], "when": pa.array([0, 1], pa.timestamp("s")),
                      "big": pa.array([2**62, 1], pa.int64()), "f": [float("nan"), 1.0]})
    pq.write_table(table, tmp_path / "b.parquet")
    profile = profile_file(tmp_path / "b.parquet", limits=LIMITS)
    assert profile.preview[0]["blob"] == "<binary: 10 bytes>" and profile.preview[1]["blob"] is None
    assert profile.preview[0]["when"] == "1970-01-01 00:00:00" and profile.preview[0]["f"] == "nan"
    json.dumps(profile.data, allow_nan=False)  # PostgreSQL's JSON takes no NaN
    assert profile.column_types()["when"] == ["datetime"]
