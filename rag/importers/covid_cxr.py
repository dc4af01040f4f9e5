"""Import the COVID-19 image data collection (Cohen et al., ieee8023/covid-chestxray-dataset).

`metadata.csv` has one row per image: patientid, offset, sex, age, finding, survival, intubated,
intubation_present, went_icu, in_icu, needed_supplemental_O2, extubated, temperature,
pO2_saturation, leukocyte_count, neutrophil_count, lymphocyte_count, view, modality, date,
location, folder, filename, doi, url, license, clinical_notes, other_notes.

The clinical notes describe the *patient* and repeat on each of the patient's rows (or differ per
row when the images come from different figures of one paper), so the corpus has one document per
patient: findings, the views taken, the distinct notes, and the patient's usable images. Facts
that belong to one time point (view, date, ICU status, temperature, licence, ...) stay with their
image in `metadata["images"]`, aligned with `Document.images`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from rag.corpus import CorpusError, Document, write_jsonl
from rag.importers.report import ImportReport, SourceImages, age_field, sex_field

DATASET = "covid_cxr"
DOMAIN = "radiology"
SOURCE = "COVID-19 image data collection (Cohen et al., 2020)"
REQUIRED_COLUMNS = ("patientid", "finding", "filename", "clinical_notes")
# Facts about the patient rather than one image; rows that disagree are reported.
OUTCOME_COLUMNS = ("survival", "intubated", "went_icu", "needed_supplemental_O2", "extubated")
PATIENT_COLUMNS = ("sex", "age", *OUTCOME_COLUMNS)
# Facts about one image (one time point), kept per image.
IMAGE_COLUMNS = ("finding", "view", "modality", "offset", "date", "location", "license", "intubation_present",
                 "in_icu", "temperature", "pO2_saturation", "leukocyte_count", "neutrophil_count", "lymphocyte_count")

Row = tuple[int, dict[str, str], str | None]
"""A usable CSV row: its first line in the file, its fields, and its image's corpus path (if usable)."""


def import_covid_cxr(metadata_csv: Path, images_dir: Path, out_dir: Path, copy_images: bool = False) -> ImportReport:
    """Import metadata.csv + images into `out_dir/corpus.jsonl` (one document per patient).

    Rows with invalid UTF-8 or a wrong number of fields are skipped; a missing or corrupt image is
    dropped from its patient; a patient with no usable image and no clinical notes is skipped. All
    are reported with the row's first line in the file. Raises CorpusError when the file is missing
    or lacks a required column, or when `copy_images` is False and `images_dir` is not inside
    `out_dir` (see SourceImages).
    """
    if not metadata_csv.is_file():
        raise CorpusError(f"metadata file not found: {metadata_csv}")
    images = SourceImages(images_dir, out_dir, copy_images)
    corpus = out_dir / "corpus.jsonl"
    report = ImportReport(DATASET, str(corpus))

    patients: dict[str, list[Row]] = {}
    first_listed: dict[str, tuple[str, int]] = {}  # image path -> (patient, line) that listed it first
    for line, row in _read_rows(metadata_csv, report):
        pid = row["patientid"].strip()
        if not pid:
            report.add_problem(metadata_csv, line, None, "missing patientid; row skipped")
            continue
        record_id = f"covid-{pid}"
        relpath = None
        filename = row["filename"].strip()
        if not filename:
            report.add_problem(metadata_csv, line, record_id, "no image filename; row kept for its notes")
        else:
            relpath, why = images.place(filename)
            if why:
                report.add_problem(metadata_csv, line, record_id, f"{why}; image skipped")
            else:
                owner, owner_line = first_listed.setdefault(relpath, (pid, line))
                # The upstream file lists a few images under two patient ids: a leak for held-out tests.
                if owner != pid:
                    report.add_problem(metadata_csv, line, record_id, f"image {filename} is also listed for "
                                       f"patient {owner} (line {owner_line}); kept for both")
        patients.setdefault(pid, []).append((line, row, relpath))

    docs = []
    for pid, rows in patients.items():
        if not any(relpath for _, _, relpath in rows) and not any(row["clinical_notes"].strip() for _, row, _ in rows):
            lines = ", ".join(str(line) for line, _, _ in rows)
            report.add_problem(metadata_csv, rows[0][0], f"covid-{pid}", "no usable image and no clinical notes "
                               f"(rows on line {lines}); patient skipped")
            continue
        docs.append(_patient_document(pid, rows, metadata_csv, report))
        report.imported += len(rows)

    report.documents = {"patient": len(docs)}
    write_jsonl(corpus, docs)
    report.write(out_dir / "import_report.json")
    return report


def _read_rows(path: Path, report: ImportReport) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (first line of the row, fields by column) for each well-formed data row.

    The file is decoded with surrogateescape so one bad byte costs one row, not the whole file;
    the csv module handles quoted notes that span lines, and `line_num` tracks where each row starts.
    """
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in REQUIRED_COLUMNS if name not in header]
        if missing:
            raise CorpusError(f"{path}: header lacks column(s) {', '.join(missing)}; "
                              "expected the covid-chestxray-dataset metadata.csv")
        while True:
            line = reader.line_num + 1  # line_num is where the previous row ended
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                report.read += 1
                report.add_problem(path, line, None, f"unreadable CSV row ({exc}); row skipped")
                continue
            if not fields:  # a blank line
                continue
            report.read += 1
            if len(fields) != len(header):
                report.add_problem(path, line, None, f"row has {len(fields)} fields, the header has {len(header)}; "
                                   "row skipped")
                continue
            row = dict(zip(header, fields))
            why = _undecodable(row)
            if why:
                pid = row["patientid"].strip()
                report.add_problem(path, line, f"covid-{pid}" if pid else None, f"{why}; row skipped")
                continue
            yield line, row


def _undecodable(row: dict[str, str]) -> str | None:
    # surrogateescape turns each undecodable byte 0xNN into the lone surrogate U+DCNN.
    for column, value in row.items():
        for char in value:
            if "\udc80" <= char <= "\udcff":
                byte = ord(char) - 0xDC00
                return f"invalid UTF-8 (byte 0x{byte:02x}) in column '{column}'; re-save the file as UTF-8"
    return None


def _patient_document(pid: str, rows: list[Row], path: Path, report: ImportReport) -> Document:
    record_id = f"covid-{pid}"
    facts: dict[str, tuple[str, int]] = {}
    for line, row, _ in rows:
        for column in PATIENT_COLUMNS:
            value = row.get(column, "").strip()
            if not value:
                continue
            kept, kept_line = facts.setdefault(column, (value, line))
            if value != kept:
                report.add_problem(path, line, record_id, f"{column} is '{value}' here but '{kept}' on line "
                                   f"{kept_line}; kept '{kept}'")

    images: list[str] = []
    image_facts: list[dict[str, str]] = []
    for _, row, relpath in rows:
        if relpath and relpath not in images:
            images.append(relpath)
            image_facts.append({"path": relpath, "filename": row["filename"].strip(),
                                **{c: row[c].strip() for c in IMAGE_COLUMNS if row.get(c, "").strip()}})

    def distinct(column: str) -> list[str]:
        return list(dict.fromkeys(v for _, row, _ in rows if (v := row.get(column, "").strip())))

    findings = distinct("finding")
    notes = distinct("clinical_notes")
    other_notes = distinct("other_notes")
    dois = distinct("doi")
    urls = distinct("url")
    taken = list(dict.fromkeys(t for f in image_facts if (t := f"{f.get('view', '')} {f.get('modality', '')}".strip())))
    finding = " / ".join(findings) or "Unknown finding"

    parts = [f"Finding: {finding}."]
    if taken:
        parts.append(f"Images: {', '.join(taken)}.")
    if notes:
        parts.append("Clinical notes: " + "\n\n".join(notes))
    if other_notes:
        parts.append("Other notes: " + "\n\n".join(other_notes))

    known = {column: value for column, (value, _) in facts.items()}
    sex, age = known.get("sex", ""), known.get("age", "")
    who = ", ".join(p for p in (sex, age) if p)
    reference = f"doi:{dois[0]}" if dois else (urls[0] if urls else "")
    return Document(
        id=record_id,
        domain=DOMAIN,
        title=f"{finding} — patient {pid}" + (f" ({who})" if who else ""),
        text="\n\n".join(parts),
        images=images,
        source=f"{SOURCE}; {reference}" if reference else SOURCE,
        metadata={
            "kind": "patient",
            "patient_id": pid,
            "findings": findings,
            "sex": sex_field(sex),
            "age": age_field(age),
            **{c: known.get(c) for c in OUTCOME_COLUMNS},
            "views": list(dict.fromkeys(f["view"] for f in image_facts if "view" in f)),
            "modalities": list(dict.fromkeys(f["modality"] for f in image_facts if "modality" in f)),
            "licenses": list(dict.fromkeys(f["license"] for f in image_facts if "license" in f)),
            "dois": dois,
            "urls": urls,
            "images": image_facts,
        },
    )
