"""Closed questions built from real data (MedPix 2.0 case fields, TCMBench, CMMLU) for
benchmarks/realdata_qa.py: the answer is an option, options are distinct, images exist, document ids
are the cases'. The real samples are read where present (../shared/realdata or $MEDRAG_REALDATA), the
small MedPix fixture always. No model runs."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from rag.corpus import QAItem, read_documents
from rag.importers.medpix import (DIAGNOSIS_OPTIONS, PLANE_OPTIONS, closed_questions, differential_items,
                                  import_medpix, same_diagnosis)
from rag.importers.tcm_mcq import MATERIA_MEDICA, read_cmmlu, read_tcmbench

FIXTURE = Path(__file__).parent / "fixtures" / "medpix"
REALDATA = Path(os.environ.get("MEDRAG_REALDATA", Path(__file__).resolve().parents[1].parent / "shared" / "realdata"))
REAL_MEDPIX = REALDATA / "medpix2_test"
needs_medpix = pytest.mark.skipif(not REAL_MEDPIX.is_dir(), reason=f"{REAL_MEDPIX} not present")
needs_tcm = pytest.mark.skipif(not (REALDATA / "tcmbench_sample").is_dir() or not (REALDATA / "cmmlu_tcm").is_dir(),
                               reason=f"TCM samples not in {REALDATA}")


def imported(root: Path, out: Path, descriptions: str, cases: str) -> Path:
    import_medpix(root / descriptions, root / cases, root / "images", out, copy_images=True)
    return out / "corpus.jsonl"


def check_medpix_questions(corpus: Path, questions: list[QAItem]) -> None:
    """The properties every MedPix closed question must have, checked against the imported documents."""
    docs = {d.id: d for d in read_documents(corpus, check_images=False)}
    for q in questions:
        assert q.answer in q.options, q.id
        assert len({o.strip().lower() for o in q.options}) == len(q.options), (q.id, q.options)
        assert (corpus.parent / q.image).is_file(), q.id
        case, image = docs[q.doc_id], docs[q.metadata["image_doc"]]
        assert case.metadata["kind"] == "case" and image.metadata["case_id"] == case.metadata["case_id"], q.id
        assert q.image in case.images and q.image == image.images[0], q.id
        topic = q.metadata["topic"]
        if topic == "diagnosis":
            assert len(q.options) == DIAGNOSIS_OPTIONS
            assert q.answer.lower().split()[0] in case.metadata["diagnosis"].lower(), (q.id, q.answer)
            assert not any(same_diagnosis(o, case.metadata["diagnosis"]) for o in q.options if o != q.answer), q.id
        elif topic == "modality":
            assert q.answer == {"CT": "CT", "MR": "MRI"}[image.metadata["image_type"]], q.id
        else:
            assert topic == "plane" and q.answer == PLANE_OPTIONS[image.metadata["plane"].lower()], q.id


def test_fixture_questions(tmp_path: Path) -> None:
    corpus = imported(FIXTURE, tmp_path, "descriptions.jsonl", "cases.jsonl")
    questions = closed_questions(corpus)
    check_medpix_questions(corpus, questions)
    abscess = [q for q in questions if q.doc_id == "medpix-case-MPX9001" and q.metadata["topic"] == "diagnosis"]
    assert abscess, "the fixture's abscess case has imported images"
    # Its differential is "Brain abscess / Glioblastoma / Metastasis": both others are offered, the repeat is not.
    assert {"Glioblastoma", "Metastasis"} <= set(abscess[0].options) and abscess[0].metadata["from_differential"] == 2
    assert len({q.id for q in questions}) == len(questions)
    # Same seed, same questions; only the images asked for are asked about.
    assert [q.to_json() for q in closed_questions(corpus)] == [q.to_json() for q in questions]
    one = questions[0].image
    assert {q.image for q in closed_questions(corpus, images={one})} == {one}


def test_differential_parsing() -> None:
    assert differential_items("•  Abscess\n•  Parasitic disease\n•  Metastasis (unusual appearance)") == [
        "Abscess", "Parasitic disease", "Metastasis"]
    assert differential_items("Lytic bone lesion: metastatic disease, myeloma, and osteosarcoma.") == [
        "metastatic disease", "myeloma", "osteosarcoma"]
    # Headings, "X vs. Y" and prose are not options; neither is "N/A".
    assert differential_items("Metastatic Adenocarcinoma: \nLung\nCommunicating vs. Non-communicating") == ["Lung"]
    assert differential_items("N/A") == []
    assert same_diagnosis("Metastasis (unusual appearance)", "Metastatic Squamous Cell Carcinoma")
    assert same_diagnosis("Dacryocystocele with or without dacryocystitis", "Dacryocystocele with dacryocystitis")
    assert not same_diagnosis("Teratoma", "Choroid Plexus Carcinoma")


@needs_medpix
def test_real_medpix_questions(tmp_path: Path) -> None:
    corpus = imported(REAL_MEDPIX, tmp_path, "descriptions_test.jsonl", "cases_test.jsonl")
    questions = closed_questions(corpus)
    check_medpix_questions(corpus, questions)
    described = [json.loads(line) for line in (REAL_MEDPIX / "descriptions_test.jsonl").open(encoding="utf-8")]
    kinds = Counter(q.metadata["topic"] for q in questions)
    assert kinds["modality"] == kinds["diagnosis"] == len(described)
    assert kinds["plane"] == sum(d["Description"]["Plane"].lower() in PLANE_OPTIONS for d in described)
    # Most distractors come from the case's own differential, not from other cases.
    diagnosis = [q for q in questions if q.metadata["topic"] == "diagnosis"]
    assert sum(q.metadata["from_differential"] for q in diagnosis) > len(diagnosis) * (DIAGNOSIS_OPTIONS - 1) / 2


@needs_tcm
def test_real_tcm_questions() -> None:
    path = REALDATA / "tcmbench_sample" / "FKU_A1A2_sample300.json"
    fku = read_tcmbench(path)
    expected = [e for e in json.loads(path.read_text(encoding="utf-8"))["example"] if e["knowledge_point"] == MATERIA_MEDICA]
    assert len(fku) == len(expected) > 0
    for q, e in zip(fku, expected):
        assert len(q.options) == 5 and q.options["ABCDE".index(e["answer"][0])] == q.answer
        assert "A．" not in q.question and "E．" not in q.question  # the options are not left in the stem
    b1 = read_tcmbench(REALDATA / "tcmbench_sample" / "KHC_B1_sample50.json")
    assert b1 and all(len(q.options) == 5 and q.answer in q.options for q in b1)
    cmmlu_csv = REALDATA / "cmmlu_tcm" / "test_traditional_chinese_medicine.csv"
    cmmlu = read_cmmlu(cmmlu_csv)
    with open(cmmlu_csv, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(cmmlu) == len(rows)
    assert all(q.answer == row[row["Answer"]] and len(q.options) == 4 for q, row in zip(cmmlu, rows))
    assert len({q.id for q in fku + b1 + cmmlu}) == len(fku) + len(b1) + len(cmmlu)


def test_majority_class() -> None:
    """A kind with one option set guesses its most frequent answer; questions whose options differ
    guess the position most often right over all of them, whatever their kind."""
    from benchmarks.realdata_qa import majority_guesses

    def item(i: int, topic: str, answer: str, options: list[str]) -> QAItem:
        return QAItem(f"q{i}", "?", answer, "d", "radiology", "test", options=options, metadata={"topic": topic})

    items = [item(0, "plane", "axial", ["axial", "coronal"]), item(1, "plane", "axial", ["axial", "coronal"]),
             item(2, "plane", "coronal", ["axial", "coronal"]),
             item(3, "diagnosis", "b", ["a", "b", "c"]), item(4, "diagnosis", "y", ["x", "y", "z"]),
             item(5, "diagnosis", "r", ["r", "s", "t"]), item(6, "tcm", "m", ["m", "n"]), item(7, "tcm", "p", ["p", "q"])]
    # Positions right over the five questions with varying options: 1, 1, 0, 0, 0 -> the first option.
    assert majority_guesses(items) == {"q0": "axial", "q1": "axial", "q2": "axial", "q3": "a", "q4": "x", "q5": "r",
                                       "q6": "m", "q7": "p"}
