"""benchmarks/retrieval.py: its summaries, fold pooling, and the MedPix run end to end on the real cases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("MEDRAG_REALDATA", REPO.parent / "shared" / "realdata"))


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("retrieval")


def test_summary_gives_recall_latency_and_where_the_time_goes(bench) -> None:
    timings = [{"encode": 0.010, "search": 0.002, "total": 0.013}, {"encode": 0.030, "search": 0.004, "total": 0.035}]
    m = bench.summarise([0, 3, None], [0.013, 0.035, 0.020], timings + [{"encode": 0.020, "search": 0.001,
                                                                         "total": 0.022}])
    assert m["n"] == 3
    assert m["recall@1"] == pytest.approx(1 / 3, abs=1e-4) and m["recall@5"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["mrr"] == pytest.approx((1 + 1 / 4) / 3, abs=1e-4)
    assert m["latency_ms_p50"] == 20.0 and m["stage_ms_p50"] == {"encode": 20.0, "search": 2.0}  # no "total"
    assert "latency_ms_p50" not in bench.summarise([0])


def test_folds_pool_by_their_sizes(bench) -> None:
    a = {"s": {"all": bench.summarise([0, 0, None, None], [0.01] * 4)}}
    b = {"s": {"all": bench.summarise([0, 1], [0.03] * 2)}}
    pooled = bench._merge_folds([a, b])["s"]["all"]
    assert pooled["n"] == 6 and pooled["recall@1"] == pytest.approx(3 / 6, abs=1e-4)
    assert pooled["recall@1_ci95"] == bench.wilson(3, 6)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not (REALDATA / "medpix2_test").is_dir(), reason=f"real MedPix not found at {REALDATA}")
def test_the_medpix_run_finishes_with_both_folds(bench, tmp_path: Path) -> None:
    # both calibration folds: the fold loop once crashed after the uncalibrated rows were measured
    report = bench.run_medpix(tmp_path, folds=2)
    assert set(report["fusion_calibrated"]) == {"a", "b"}
    calibrated, uncalibrated = report["calibrated"]["system (calibrated, cross-fitted)"], report["uncalibrated"]
    assert calibrated["all"]["n"] == uncalibrated["system (uncalibrated)"]["all"]["n"]  # every query, once
    assert {"channel: image", "rrf bm25+dense", "rrf all channels"} <= set(uncalibrated)
    assert "stage_ms_p50" in uncalibrated["system (uncalibrated)"]["text questions"]


def test_the_joined_corpus_keeps_every_document_and_its_images(bench, tmp_path: Path) -> None:
    from PIL import Image

    from rag.corpus import read_documents, validate_corpus

    source = tmp_path / "sample"
    (source / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(source / "images" / "a.png")
    line = '{{"id": "{}", "domain": "radiology", "title": "t", "text": "x", "images": {}}}'
    (source / "corpus.jsonl").write_text(line.format("d1", '["images/a.png"]') + "\n", encoding="utf-8")
    (source / "corpus_added.jsonl").write_text(line.format("d2", "[]"), encoding="utf-8")  # no final newline
    joined = bench._joined_corpus(source, tmp_path / "both")
    assert [d.id for d in read_documents(joined)] == ["d1", "d2"]
    assert (tmp_path / "both" / "images" / "a.png").is_file()
    assert not validate_corpus(joined).problems
