"""The corpus and QA data model: reading, writing and validation with line-numbered problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from rag.corpus import (CorpusError, Document, QAItem, read_documents, read_qa, validate_corpus, validate_qa,
                        write_jsonl)


def _png(path: Path, size: tuple[int, int] = (16, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 30)).save(path)


def _doc(i: int, **overrides) -> dict:
    record = {"id": f"d{i}", "domain": "radiology", "title": f"Case {i}", "text": f"Report {i}.",
              "images": [f"images/d{i}.png"], "names": {}, "source": "test", "metadata": {}}
    record.update(overrides)
    return record


@pytest.fixture
def good_corpus(tmp_path: Path) -> Path:
    for i in range(3):
        _png(tmp_path / f"images/d{i}.png")
    write_jsonl(tmp_path / "corpus.jsonl", [_doc(i) for i in range(3)])
    return tmp_path / "corpus.jsonl"


def test_round_trip(good_corpus: Path, tmp_path: Path) -> None:
    docs = read_documents(good_corpus)
    assert [d.id for d in docs] == ["d0", "d1", "d2"]
    assert isinstance(docs[0], Document) and docs[0].images == ["images/d0.png"]
    write_jsonl(tmp_path / "copy.jsonl", docs)
    assert (tmp_path / "copy.jsonl").read_text() == good_corpus.read_text()


def test_unicode_names_survive(tmp_path: Path) -> None:
    doc = Document(id="herb-gouqizi", domain="tcm_herb", title="Gou Qi Zi", text="枸杞子 monograph",
                   names={"zh": "枸杞子", "pinyin": "Gou Qi Zi"})
    write_jsonl(tmp_path / "c.jsonl", [doc])
    assert "枸杞子" in (tmp_path / "c.jsonl").read_text(encoding="utf-8")
    assert read_documents(tmp_path / "c.jsonl")[0].names["zh"] == "枸杞子"


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / f"images/d{i}.png")
    (tmp_path / "images/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (tmp_path / "images/notes.png").write_text("this is a text file named .png")
    (tmp_path.parent / "outside.png").write_bytes(b"")
    lines = [
        json.dumps(_doc(0)),                                             # 1 fine
        json.dumps(_doc(1, images=["images/missing.png"])),              # 2 missing image
        json.dumps(_doc(2, images=["../outside.png"])),                  # 3 escapes
        json.dumps(_doc(3, images=["images/corrupt.png"])),              # 4 corrupt image
        json.dumps(_doc(4, text="   ", images=[])),                      # 5 empty text
        json.dumps(_doc(0, images=[])),                                  # 6 duplicate id
        json.dumps(_doc(6, domain="dermatology", images=[])),            # 7 unknown domain
        '{"id": "d7", "domain": "radiology", "text": ',                  # 8 malformed JSON
        json.dumps(_doc(8, images=["images/notes.png"])),                # 9 not an image
        json.dumps(_doc(9, images=["/etc/passwd"])),                     # 10 absolute path
        json.dumps(_doc(10, text=5, images=[])),                         # 11 wrong type
    ]
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    raw += b'{"id": "d11", "domain": "radiology", "text": "caf\xe9"}\n'  # 12 invalid UTF-8 (latin-1)
    path = tmp_path / "broken.jsonl"
    path.write_bytes(raw)

    report = validate_corpus(path)
    by_line = {}
    for p in report.problems:
        by_line.setdefault(p.line, []).append(p.message)
    assert 1 not in by_line
    assert "not found" in by_line[2][0] and "missing.png" in by_line[2][0]
    assert "escapes the corpus folder" in by_line[3][0]
    assert "corrupt" in by_line[4][0]
    assert by_line[5] == ["empty text"]
    assert "duplicate id (first on line 1)" in by_line[6][0]
    assert "unknown domain 'dermatology'" in by_line[7][0]
    assert "malformed JSON" in by_line[8][0]
    assert "corrupt" in by_line[9][0] and "notes.png" in by_line[9][0]
    assert "must be relative" in by_line[10][0]
    assert "field 'text' must be str" in by_line[11][0]
    assert "invalid UTF-8" in by_line[12][0]
    assert {p.record_id for p in report.problems if p.line == 2} == {"d1"}
    assert "broken.jsonl:2 [d1]" in str(next(p for p in report.problems if p.line == 2))

    with pytest.raises(CorpusError, match="broken.jsonl:3"):
        read_documents(path)
    kept = read_documents(path, skip_invalid=True)
    assert [d.id for d in kept] == ["d0"]


def test_symlink_out_of_corpus_is_an_escape(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "secret.png"
    _png(outside)
    corpus_dir = tmp_path / "corpus"
    (corpus_dir / "images").mkdir(parents=True)
    (corpus_dir / "images" / "link.png").symlink_to(outside)
    write_jsonl(corpus_dir / "c.jsonl", [_doc(0, images=["images/link.png"])])
    report = validate_corpus(corpus_dir / "c.jsonl")
    assert len(report.problems) == 1 and "escapes" in report.problems[0].message


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    # A small file (bilevel, compresses to a few kB) that decodes to 81 megapixels.
    (tmp_path / "images").mkdir()
    Image.new("1", (9000, 9000)).save(tmp_path / "images/bomb.png")
    write_jsonl(tmp_path / "c.jsonl", [_doc(0, images=["images/bomb.png"])])
    report = validate_corpus(tmp_path / "c.jsonl")
    assert len(report.problems) == 1 and "over" in report.problems[0].message


def test_qa_validation(good_corpus: Path, tmp_path: Path) -> None:
    _png(tmp_path / "queries/q.png")
    items = [
        QAItem(id="q1", question="Is it?", answer="yes", options=["yes", "no"], doc_id="d0", domain="radiology",
               split="train", image="queries/q.png"),
        QAItem(id="q2", question="Which?", answer="C", options=["A", "B"], doc_id="d1", domain="radiology",
               split="test"),
        QAItem(id="q3", question="Where?", answer="x", doc_id="nope", domain="radiology", split="holdout"),
        QAItem(id="q1", question="Dup?", answer="no", doc_id="d2", domain="radiology", split="val"),
    ]
    write_jsonl(tmp_path / "qa.jsonl", items)
    doc_ids = {d.id for d in read_documents(good_corpus)}
    report = validate_qa(tmp_path / "qa.jsonl", doc_ids=doc_ids)
    messages = {(p.line, p.message) for p in report.problems}
    assert (2, "answer 'C' is not one of the options") in messages
    assert (3, "unknown split 'holdout' (expected one of train, val, test, added)") in messages
    assert (3, "doc_id 'nope' is not in the corpus") in messages
    assert (4, "duplicate id (first on line 1)") in messages
    assert not any(p.line == 1 for p in report.problems)
    assert [q.id for q in read_qa(tmp_path / "qa.jsonl", skip_invalid=True, doc_ids=doc_ids)] == ["q1"]


def test_write_is_atomic_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    write_jsonl(path, [_doc(0)])
    before = path.read_text()

    def records():
        yield _doc(1)
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(path, records())
    assert path.read_text() == before
