"""Importers of public datasets (MedPix 2.0, COVID-19 image data collection) on small fixtures with
deliberate defects (see tests/fixtures/*/README.txt), and on the real samples when present."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from rag.corpus import CorpusError, Document, read_documents, resolve_image, validate_corpus
from rag.importers.covid_cxr import import_covid_cxr
from rag.importers.medpix import import_medpix
from rag.importers.report import ImportReport

FIXTURES = Path(__file__).parent / "fixtures"
MEDPIX = FIXTURES / "medpix"
COVID = FIXTURES / "covid_cxr"
# The repository sits beside shared/, which holds real samples we may read but not redistribute.
REALDATA = Path(os.environ.get("MEDRAG_REALDATA", Path(__file__).resolve().parents[1].parent / "shared" / "realdata"))
REAL_MEDPIX = REALDATA / "medpix2_test"
REAL_COVID = REALDATA / "covid_cxr_clinical_notes"


def problem_keys(report: ImportReport) -> list[tuple[str, int, str | None]]:
    return [(Path(p.path).name, p.line, p.record_id) for p in report.problems_in_file_order()]


def message(report: ImportReport, file: str, line: int) -> str:
    return " | ".join(p.message for p in report.problems if Path(p.path).name == file and p.line == line)


def by_id(out: Path) -> dict[str, Document]:
    docs = read_documents(out / "corpus.jsonl")
    return {d.id: d for d in docs}


def assert_valid_corpus(out: Path) -> None:
    validation = validate_corpus(out / "corpus.jsonl")
    assert validation.ok, [str(p) for p in validation.problems]


# --- MedPix 2.0 -----------------------------------------------------------------------------------

def run_medpix(out: Path, root: Path = MEDPIX, copy_images: bool = True) -> ImportReport:
    return import_medpix(root / "descriptions.jsonl", root / "cases.jsonl", root / "images", out,
                         copy_images=copy_images)


@pytest.fixture(scope="module")
def medpix(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImportReport, Path]:
    out = tmp_path_factory.mktemp("medpix")
    return run_medpix(out), out


def test_medpix_counts_ids_and_valid_corpus(medpix: tuple[ImportReport, Path]) -> None:
    report, out = medpix
    assert (report.read, report.imported, report.skipped) == (18, 6, 12)
    assert report.documents == {"case": 2, "image": 4}
    assert set(by_id(out)) == {
        "medpix-case-MPX9001", "medpix-case-MPX9002", "medpix-img-MPX9001_synpic101",
        "medpix-img-MPX9001_synpic102", "medpix-img-MPX9002_synpic205", "medpix-img-MPX9003_synpic301"}
    assert_valid_corpus(out)
    assert json.loads((out / "import_report.json").read_text(encoding="utf-8")) == report.to_json()


def test_medpix_case_document(medpix: tuple[ImportReport, Path]) -> None:
    docs = by_id(medpix[1])
    case = docs["medpix-case-MPX9001"]
    assert case.domain == "radiology" and case.title == "Frontal Brain Abscess"
    headers = ["History:", "Exam:", "Findings:", "Differential Diagnosis:", "Case Diagnosis:",
               "Treatment & Follow Up:", "Discussion:"]
    positions = [case.text.index(h) for h in headers]
    assert positions == sorted(positions), "sections in reading order"
    assert "Findings: Ring-enhancing right frontal lesion" in case.text
    # CT list first, then MR; the missing synpic103 is dropped.
    assert case.images == docs["medpix-img-MPX9001_synpic101"].images + docs["medpix-img-MPX9001_synpic102"].images
    meta = case.metadata
    assert meta["kind"] == "case" and meta["case_id"] == "MPX9001"
    assert meta["diagnosis"] == "Brain abscess" and meta["diagnosis_by"] == "Aspiration and culture"
    assert (meta["category"], meta["acr_code"], meta["topic"]) == ("Infection", "1.3", "Brain Abscess")
    assert meta["modalities"] == ["CT", "MR"]
    assert meta["sections"]["findings"] == "Ring-enhancing right frontal lesion with surrounding edema."
    assert set(meta["sections"]) == {"history", "exam", "findings", "differential_diagnosis", "diagnosis",
                                      "treatment_follow_up", "discussion"}

    partial = docs["medpix-case-MPX9002"]
    assert set(partial.metadata["sections"]) == {"history", "findings", "diagnosis"}
    assert "Exam:" not in partial.text and partial.metadata["diagnosis_by"] is None
    assert partial.images == docs["medpix-img-MPX9002_synpic205"].images


def test_medpix_image_document(medpix: tuple[ImportReport, Path]) -> None:
    docs = by_id(medpix[1])
    image = docs["medpix-img-MPX9001_synpic102"]
    assert image.text.startswith("T2 MR shows vasogenic edema")
    assert "Modality: MR - T2 weighted. Plane: Coronal. Location: Brain and Neuro (Head)." in image.text
    assert image.images == ["images/MPX9001_synpic102.png"]
    assert image.metadata == {
        "kind": "image", "case_id": "MPX9001", "image_type": "MR", "modality": "MR - T2 weighted",
        "plane": "Coronal", "age": 45, "sex": None, "location": "Brain and Neuro", "location_category": "Head",
        "acr_codes": "1.3"}
    assert docs["medpix-img-MPX9002_synpic205"].metadata["sex"] == "female"


def test_medpix_reports_every_broken_record(medpix: tuple[ImportReport, Path]) -> None:
    report = medpix[0]
    d, c = "descriptions.jsonl", "cases.jsonl"
    assert problem_keys(report) == [
        (d, 4, "medpix-img-MPX9001_synpic103"), (d, 5, "medpix-img-MPX9002_synpic201"),
        (d, 6, "medpix-img-MPX9002_synpic202"), (d, 7, None), (d, 8, None), (d, 9, "medpix-img-../escape"),
        (d, 11, None), (d, 12, "medpix-img-MPX9003_synpic301"), (d, 13, "medpix-img-MPX9001_synpic101"),
        (c, 1, "medpix-case-MPX9001"), (c, 2, "medpix-case-MPX9002"), (c, 2, "medpix-case-MPX9002"),
        (c, 2, "medpix-case-MPX9002"), (c, 3, None), (c, 4, "medpix-case-MPX9004"), (c, 5, "medpix-case-MPX9005"),
        (c, 6, "medpix-case-MPX9001"),
    ]
    expected = {
        (d, 4): "image file not found", (d, 5): "corrupt image", (d, 6): "missing caption",
        (d, 7): "malformed JSON", (d, 8): "invalid UTF-8", (d, 9): "outside the images folder",
        (d, 11): "missing field 'image'", (d, 12): "case MPX9003 was not imported",
        (d, 13): "duplicate image (first on line 1)",
        (c, 1): "MPX9001_synpic103 was not imported (see descriptions.jsonl line 4); dropped from the case",
        (c, 3): "malformed JSON", (c, 4): "missing field 'Case'", (c, 5): "case has no text",
        (c, 6): "duplicate case (first on line 1)",
    }
    for (file, line), text in expected.items():
        assert text in message(report, file, line), (file, line)
    case_2 = message(report, c, 2)
    assert "MPX9002_synpic201 was not imported (see descriptions.jsonl line 5)" in case_2
    assert "MPX9002_synpic202 was not imported (see descriptions.jsonl line 6)" in case_2
    assert "image MPX9002_synpic299 has no description" in case_2


def test_medpix_copy_mode_copies_only_imported_images(medpix: tuple[ImportReport, Path]) -> None:
    out = medpix[1]
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "MPX9001_synpic101.png", "MPX9001_synpic102.png", "MPX9002_synpic205.png", "MPX9003_synpic301.png"]
    name = "MPX9001_synpic101.png"
    assert (out / "images" / name).read_bytes() == (MEDPIX / "images" / name).read_bytes()


def test_medpix_without_copy_refers_to_the_source_images(tmp_path: Path) -> None:
    source = tmp_path / "download"
    shutil.copytree(MEDPIX, source)
    report = run_medpix(tmp_path, root=source, copy_images=False)
    assert report.documents == {"case": 2, "image": 4}
    assert not (tmp_path / "images").exists()
    for doc in by_id(tmp_path).values():
        for relpath in doc.images:
            assert relpath.startswith("download/images/")
            target, why = resolve_image(tmp_path, relpath)
            assert why is None and target.parent == (source / "images").resolve()
    assert_valid_corpus(tmp_path)


def test_without_copy_images_outside_the_output_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="outside the output folder"):
        run_medpix(tmp_path / "out", copy_images=False)
    with pytest.raises(CorpusError, match="outside the output folder"):
        import_covid_cxr(COVID / "metadata.csv", COVID / "images", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_medpix_missing_input_file(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not found"):
        import_medpix(MEDPIX / "nope.jsonl", MEDPIX / "cases.jsonl", MEDPIX / "images", tmp_path, copy_images=True)


# --- COVID-19 image data collection ---------------------------------------------------------------

@pytest.fixture(scope="module")
def covid(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImportReport, Path]:
    out = tmp_path_factory.mktemp("covid")
    return import_covid_cxr(COVID / "metadata.csv", COVID / "images", out, copy_images=True), out


def test_covid_counts_ids_and_valid_corpus(covid: tuple[ImportReport, Path]) -> None:
    report, out = covid
    assert (report.read, report.imported, report.skipped) == (14, 10, 4)
    assert report.documents == {"patient": 7}
    assert list(by_id(out)) == [f"covid-{pid}" for pid in (1, 2, 4, 6, 7, 8, 9)]
    assert_valid_corpus(out)
    assert json.loads((out / "import_report.json").read_text(encoding="utf-8")) == report.to_json()


def test_covid_patient_document(covid: tuple[ImportReport, Path]) -> None:
    docs = by_id(covid[1])
    patient = docs["covid-1"]
    assert patient.domain == "radiology" and patient.title == "COVID-19 — patient 1 (F, 55)"
    assert "Finding: COVID-19." in patient.text and "Images: PA X-ray, L X-ray." in patient.text
    # The note spans two lines in the CSV and repeats on both rows: it appears once, whole.
    assert patient.text.count("returned from Wuhan") == 1
    assert "Chest radiograph: bilateral peripheral ground-glass opacities" in patient.text
    assert patient.images == ["images/p1_pa.jpg", "images/p1_lat.png"]
    meta = patient.metadata
    assert (meta["kind"], meta["patient_id"], meta["findings"], meta["sex"], meta["age"]) == (
        "patient", "1", ["COVID-19"], "female", 55)
    assert (meta["survival"], meta["intubated"], meta["went_icu"]) == ("Y", None, None)
    assert meta["views"] == ["PA", "L"] and meta["modalities"] == ["X-ray"]
    assert meta["licenses"] == ["CC BY 4.0"] and meta["dois"] == ["10.1000/fixture.1"]
    assert meta["urls"] == ["https://example.org/case1"]
    # Per-image facts stay with their image, aligned with Document.images.
    assert [i["path"] for i in meta["images"]] == patient.images
    assert meta["images"][0]["temperature"] == "38.5" and "in_icu" not in meta["images"][0]
    assert meta["images"][1]["in_icu"] == "Y"
    assert patient.source.endswith("doi:10.1000/fixture.1")


def test_covid_edge_patients(covid: tuple[ImportReport, Path]) -> None:
    docs = by_id(covid[1])
    assert docs["covid-2"].images == [] and "HIV-positive" in docs["covid-2"].text
    assert docs["covid-4"].images == ["images/p4.jpg"]
    assert "\ufffd ring-like" in docs["covid-6"].text and "Other notes: Case courtesy" in docs["covid-6"].text
    assert docs["covid-7"].images == docs["covid-1"].images[:1]
    changed = docs["covid-8"]
    assert changed.title == "No Finding / COVID-19 — patient 8 (M, 44)"
    assert changed.metadata["findings"] == ["No Finding", "COVID-19"] and changed.metadata["survival"] == "Y"
    assert changed.metadata["modalities"] == ["X-ray", "CT"]
    assert docs["covid-9"].title == "Pneumonia — patient 9" and docs["covid-9"].metadata["sex"] is None


def test_covid_reports_every_broken_row(covid: tuple[ImportReport, Path]) -> None:
    report = covid[0]
    m = "metadata.csv"
    assert problem_keys(report) == [
        (m, 6, "covid-2"), (m, 7, "covid-3"), (m, 7, "covid-3"), (m, 8, "covid-4"), (m, 10, "covid-5"),
        (m, 12, None), (m, 13, None), (m, 14, "covid-7"), (m, 16, "covid-8")]
    expected = {
        6: "image file not found", 8: "outside the images folder",
        10: "invalid UTF-8 (byte 0xff) in column 'clinical_notes'", 12: "missing patientid",
        13: "row has 9 fields, the header has 28", 14: "also listed for patient 1 (line 2)",
        16: "survival is 'N' here but 'Y' on line 15",
    }
    for line, text in expected.items():
        assert text in message(report, m, line), line
    assert "corrupt image corrupt.jpg" in message(report, m, 7)
    assert "no usable image and no clinical notes" in message(report, m, 7)


def test_covid_without_copy_and_bad_header(tmp_path: Path) -> None:
    source = tmp_path / "download"
    shutil.copytree(COVID, source)
    report = import_covid_cxr(source / "metadata.csv", source / "images", tmp_path)
    assert report.documents == {"patient": 7}
    assert by_id(tmp_path)["covid-4"].images == ["download/images/p4.jpg"]
    assert_valid_corpus(tmp_path)

    (source / "bad.csv").write_text("patientid,finding,clinical_notes\n1,COVID-19,notes\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="lacks column"):
        import_covid_cxr(source / "bad.csv", source / "images", tmp_path)


# --- real samples (read in place, never copied into the repository) ---------------------------------

@pytest.mark.skipif(not REAL_MEDPIX.is_dir(), reason=f"real MedPix sample not found at {REAL_MEDPIX}")
def test_real_medpix_sample(tmp_path: Path) -> None:
    report = import_medpix(REAL_MEDPIX / "descriptions_test.jsonl", REAL_MEDPIX / "cases_test.jsonl",
                           REAL_MEDPIX / "images", tmp_path, copy_images=True)
    assert report.documents["case"] == 69
    assert 0 < report.documents["image"] <= 200
    assert_valid_corpus(tmp_path)
    docs = by_id(tmp_path).values()
    image_paths = {p for d in docs if d.metadata["kind"] == "image" for p in d.images}
    assert {p for d in docs if d.metadata["kind"] == "case" for p in d.images} <= image_paths
    assert all(d.metadata["sections"] for d in docs if d.metadata["kind"] == "case")


@pytest.mark.skipif(not REAL_COVID.is_dir(), reason=f"real COVID-19 sample not found at {REAL_COVID}")
def test_real_covid_sample(tmp_path: Path) -> None:
    metadata = REAL_COVID / "metadata_subset.csv"
    report = import_covid_cxr(metadata, REAL_COVID / "images", tmp_path, copy_images=True)
    with open(metadata, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # Every patient of the sample has clinical notes, so every patient becomes a document.
    assert report.documents == {"patient": len({row["patientid"] for row in rows})}
    assert report.read == len(rows)
    assert_valid_corpus(tmp_path)
    assert sum(len(d.images) for d in by_id(tmp_path).values()) <= len(rows)
