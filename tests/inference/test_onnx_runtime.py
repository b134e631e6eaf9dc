"""FTSERVE_ONNX: the encoders exported to ONNX Runtime answer like their PyTorch models (fp32: the same scores;
int8: the same labels and spans), exports are cached outside the version dir and never reused for other files."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from inference.onnx_runtime import OrtEncoder
from inference.service import _load_predictor
from tests.tinymodels import save_tiny_encoder

TEXTS = ["a great film", "dull and bad", "the movie was good and it is great", "bad", "boring plot, long story",
         "good good good", "the acting is very funny, the plot is not", "i loved it", "worst film of the year"]
# Contexts of distinct words: with `save_tiny_encoder`'s QA model, each has one span ahead of the next by more than
# 0.15 logits, where int8 moves a logit by ~0.02.
PAIRS = [("what was it?", "the film was great and it is dull"), ("is it good?", "it is good and bad"),
         ("was it a good film?", "a dull movie to the end of it"), ("what?", "great film"),
         ("and?", "bad movie was good")]


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version dirs laid out as the registry does: <data_dir>/models/<name>/<version>."""
    data = tmp_path_factory.mktemp("onnx") / "data"
    save_tiny_encoder(data / "models" / "cls" / "1", task="classification")
    save_tiny_encoder(data / "models" / "qa" / "1", task="question-answering")
    return data


@pytest.fixture(scope="module")
def loaded(data_dir: Path) -> dict[tuple[str, str], Any]:
    """(task, mode) → predictor; "off" is PyTorch. The version dirs' files are compared before and after."""
    before = {name: listing(data_dir / "models" / name / "1") for name in ("cls", "qa")}
    out = {}
    for task, name in (("classification", "cls"), ("question-answering", "qa")):
        for mode in ("off", "fp32", "int8"):
            out[task, mode] = _load_predictor(task, str(data_dir / "models" / name / "1"), onnx=mode,
                                              data_dir=data_dir, torch_threads=2)
    assert {name: listing(data_dir / "models" / name / "1") for name in ("cls", "qa")} == before, \
        "an export wrote into a version dir"
    return out


def test_onnx_fp32_scores_equal_pytorch_and_int8_labels_agree(loaded: dict[tuple[str, str], Any]) -> None:
    torch_out = loaded["classification", "off"](TEXTS, top_k=None)
    assert isinstance(loaded["classification", "fp32"].model, OrtEncoder)
    assert isinstance(loaded["classification", "int8"].model, OrtEncoder)
    for mode, tolerance in (("fp32", 1e-4), ("int8", 0.02)):
        onnx_out = loaded["classification", mode](TEXTS, top_k=None)
        for want, got in zip(torch_out, onnx_out, strict=True):
            assert got[0]["label"] == want[0]["label"], (mode, want, got)
            assert [g["label"] for g in got] == [w["label"] for w in want]
            assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=tolerance), mode
    # What makes the checks above mean something: answers that differ by text, and none near a tie.
    top = [p[0]["score"] for p in torch_out]
    assert max(top) - min(top) > 0.1 and min(top) > 0.55, top


def test_onnx_fp32_spans_equal_pytorch_and_int8_spans_agree(loaded: dict[tuple[str, str], Any]) -> None:
    want = loaded["question-answering", "off"](PAIRS)
    assert len({(a["start"], a["end"]) for a in want}) == len(PAIRS)
    for mode, tolerance in (("fp32", 1e-4), ("int8", 0.02)):
        got = loaded["question-answering", mode](PAIRS)
        assert [(a["answer"], a["start"], a["end"]) for a in got] == [(a["answer"], a["start"], a["end"])
                                                                      for a in want], mode
        assert [a["score"] for a in got] == pytest.approx([a["score"] for a in want], abs=tolerance), mode


def test_an_onnx_predictor_runs_two_batches_at_once_with_the_results_of_one_at_a_time(
        loaded: dict[tuple[str, str], Any]) -> None:
    """With 2 torch threads, sessions compute each run on one thread and the API runs two batches at once."""
    from concurrent.futures import ThreadPoolExecutor

    assert loaded["classification", "off"].lanes == 1  # torch spreads one forward over the cores itself
    for task, inputs in (("classification", TEXTS), ("question-answering", PAIRS)):
        predictor = loaded[task, "int8"]
        assert predictor.lanes == 2
        assert predictor.model.session.get_session_options().intra_op_num_threads == 1
        # Encoded first (the API encodes on one thread per model); only the forward passes run at once.
        encoded = [predictor.encode([x]) for x in inputs]
        alone = [predictor.predict(e) for e in encoded]
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(lambda e, p=predictor: p.predict(e), encoded * 3))
        assert together == alone * 3, task


def test_an_export_is_reused_and_redone_when_the_version_files_change(
        data_dir: Path, loaded: dict[tuple[str, str], Any], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    version = data_dir / "models" / "cls" / "1"
    cache = data_dir / "cache" / "cls" / "1" / "onnx"
    exports = sorted(p.name for p in cache.iterdir())
    assert [name.split("-")[1] for name in exports] == ["fp32", "int8"]
    with caplog.at_level(logging.INFO, logger="ftserve.inference"):
        again = _load_predictor("classification", str(version), onnx="fp32", data_dir=data_dir)
    assert "exported" not in caplog.text and "with ONNX Runtime fp32" in caplog.text
    assert again(TEXTS) == loaded["classification", "fp32"](TEXTS)

    # Other files under the same name and number (a version dir is immutable, but the fingerprint does not
    # trust that): a new export, and the old ones are gone. (The exporter itself is tested above; here it copies
    # the old export, which keeps this test to a second.)
    old_file = cache / exports[0] / "model.onnx"
    monkeypatch.setattr("inference.onnx_runtime.export", lambda *a, out, **k: shutil.copyfile(old_file, out))
    config = version / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 1_000_000))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ftserve.inference"):
        _load_predictor("classification", str(version), onnx="fp32", data_dir=data_dir)
    assert "exported" in caplog.text
    now = sorted(p.name for p in cache.iterdir())
    assert len(now) == 1 and now[0].endswith("-fp32") and now[0] not in exports


def test_a_model_that_cannot_be_exported_is_served_by_pytorch(
        data_dir: Path, loaded: dict[tuple[str, str], Any], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def unsupported(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("an op the exporter does not know")

    monkeypatch.setattr("torch.onnx.export", unsupported)
    shutil.rmtree(data_dir / "cache" / "qa")  # else the cached export is used
    with caplog.at_level(logging.WARNING, logger="ftserve.inference"):
        predictor = _load_predictor("question-answering", str(data_dir / "models" / "qa" / "1"), onnx="int8",
                                    data_dir=data_dir)
    assert not isinstance(predictor.model, OrtEncoder)
    assert "served by torch" in caplog.text and "an op the exporter does not know" in caplog.text
    assert predictor(PAIRS) == loaded["question-answering", "off"](PAIRS)
    assert [p.name for p in (data_dir / "cache" / "qa" / "1" / "onnx").iterdir()] == []  # no half-made export


def test_an_export_that_cannot_be_written_is_served_by_pytorch(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def full(*args: Any, **kwargs: Any) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("tempfile.mkdtemp", full)
    shutil.rmtree(data_dir / "cache" / "cls", ignore_errors=True)  # else a cached export is used
    with caplog.at_level(logging.WARNING, logger="ftserve.inference"):
        predictor = _load_predictor("classification", str(data_dir / "models" / "cls" / "1"), onnx="fp32",
                                    data_dir=data_dir)
    assert not isinstance(predictor.model, OrtEncoder)  # a model load that failed would be a 503 for every request
    assert "served by torch" in caplog.text and "No space left" in caplog.text
    assert predictor(["fine"])[0]
