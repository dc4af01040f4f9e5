"""Import MedPix 2.0 (Siragusa et al., Data Science and Engineering 2025) as a radiology corpus.

MedPix 2.0 ships two JSONL files and a folder of PNG images:

- descriptions: one line per image, `{"Type": "CT"|"MR", "U_id": case id, "image": file stem,
  "Description": {"ACR Codes", "Age", "Caption", "Figure Part", "Modality", "Plane", "Sex"},
  "Location", "Location Category"}`;
- cases: one line per clinical case, `{"U_id", "TAC": [CT image stems], "MRI": [MR image stems],
  "Case": {"Title", "History", "Exam", "Findings", "Differential Diagnosis", "Case Diagnosis",
  "Diagnosis By", "Treatment & Follow Up", "Discussion", "Media"}, "Topic": {"Title", "Category",
  "ACR Code", "Disease Discussion", ...}}`;
- images: `<image>.png`.

Each case becomes a CASE document (its sections as text, its images, each section also kept apart
in `metadata["sections"]` so a benchmark can query with the Findings and retrieve the rest), and
each described image becomes an IMAGE document (caption plus modality, plane and location).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag.corpus import CorpusError, Document, parse_jsonl_line, iter_jsonl_lines, write_jsonl
from rag.importers.report import ImportReport, SourceImages, age_field, sex_field

DATASET = "medpix"
DOMAIN = "radiology"
SOURCE = "MedPix 2.0 (Siragusa et al., 2025)"

# Case text sections in reading order: (key in the source "Case" object, key in metadata["sections"]).
CASE_SECTIONS: tuple[tuple[str, str], ...] = (
    ("History", "history"),
    ("Exam", "exam"),
    ("Findings", "findings"),
    ("Differential Diagnosis", "differential_diagnosis"),
    ("Case Diagnosis", "diagnosis"),
    ("Treatment & Follow Up", "treatment_follow_up"),
    ("Discussion", "discussion"),
)
# A case lists its images per modality; "TAC" is Italian for CT.
IMAGE_LISTS: tuple[tuple[str, str], ...] = (("TAC", "CT"), ("MRI", "MR"))


def _text(record: dict[str, Any], key: str) -> str:
    """A text field of a source record, stripped; '' when missing, null or not text.

    Numbers count as text, so an Age written as 74 rather than "74" is not lost.
    """
    value = record.get(key)
    if isinstance(value, bool):
        return ""
    if isinstance(value, (int, float)):
        return str(value)
    return value.strip() if isinstance(value, str) else ""


def import_medpix(descriptions: Path, cases: Path, images_dir: Path, out_dir: Path,
                  copy_images: bool = False) -> ImportReport:
    """Import MedPix 2.0 into `out_dir/corpus.jsonl` and write `out_dir/import_report.json`.

    Bad records are reported and skipped; a case keeps its text when some of its images are
    unusable (each dropped image is reported). Raises CorpusError when an input is missing, or when
    `copy_images` is False and `images_dir` is not inside `out_dir` (see SourceImages).
    """
    for path in (descriptions, cases):
        if not path.is_file():
            raise CorpusError(f"MedPix file not found: {path}")
    images = SourceImages(images_dir, out_dir, copy_images)
    corpus = out_dir / "corpus.jsonl"
    report = ImportReport(DATASET, str(corpus))
    image_docs, image_lines = _read_descriptions(descriptions, images, report)
    case_docs = _read_cases(cases, descriptions, image_docs, image_lines, report)

    case_ids = {doc.metadata["case_id"] for doc in case_docs}
    for name, doc in image_docs.items():
        if doc.metadata["case_id"] not in case_ids:
            report.add_problem(descriptions, image_lines[name], doc.id,
                               f"case {doc.metadata['case_id']} was not imported from {cases.name}; "
                               "image kept without a case document")

    report.documents = {"case": len(case_docs), "image": len(image_docs)}
    write_jsonl(corpus, [*case_docs, *image_docs.values()])
    report.write(out_dir / "import_report.json")
    return report


def _keyed_records(path: Path, key_field: str, id_prefix: str, what: str, first_line: dict[str, int],
                   report: ImportReport) -> Iterator[tuple[int, dict[str, Any], str, str]]:
    """(line, record, key, document id) of each readable line with a new `key_field`; unreadable lines,
    a missing key and a repeated one are reported and skipped. `first_line` records where each key was met."""
    for line, raw in iter_jsonl_lines(path):
        report.read += 1
        record, problem = parse_jsonl_line(path, line, raw)
        if problem:
            report.add_problem(path, line, None, f"{problem.message}; line skipped")
            continue
        key = _text(record, key_field)
        if not key:
            report.add_problem(path, line, None, f"missing field '{key_field}'; line skipped")
            continue
        doc_id = f"{id_prefix}-{key}"
        if key in first_line:
            report.add_problem(path, line, doc_id, f"duplicate {what} (first on line {first_line[key]}); line skipped")
            continue
        first_line[key] = line
        yield line, record, key, doc_id


def _read_descriptions(path: Path, images: SourceImages,
                       report: ImportReport) -> tuple[dict[str, Document], dict[str, int]]:
    """Image documents by image name, and the line of every image name met (imported or not)."""
    docs: dict[str, Document] = {}
    lines: dict[str, int] = {}
    for line, record, name, doc_id in _keyed_records(path, "image", "medpix-img", "image", lines, report):
        relpath, why = None, _description_problem(record)
        if why is None:
            relpath, why = images.place(f"{name}.png")
        if why:
            report.add_problem(path, line, doc_id, f"{why}; line skipped")
            continue
        docs[name] = _image_document(doc_id, name, record, relpath)
        report.imported += 1
    return docs, lines


def _description_problem(record: dict[str, Any]) -> str | None:
    if not _text(record, "U_id"):
        return "missing field 'U_id'"
    description = record.get("Description")
    if not isinstance(description, dict):
        return "missing field 'Description'"
    if not _text(description, "Caption"):
        return "missing caption (Description.Caption)"
    return None


def _image_document(doc_id: str, name: str, record: dict[str, Any], relpath: str) -> Document:
    description = record["Description"]
    modality = _text(description, "Modality")
    plane = _text(description, "Plane")
    location = _text(record, "Location")
    location_category = _text(record, "Location Category")
    facts = []
    if modality:
        facts.append(f"Modality: {modality}.")
    if plane:
        facts.append(f"Plane: {plane}.")
    if location:
        facts.append(f"Location: {location}" + (f" ({location_category})." if location_category else "."))
    case_id = _text(record, "U_id")
    acquisition = ", ".join(p for p in (modality, plane) if p)
    return Document(
        id=doc_id,
        domain=DOMAIN,
        title=f"{name} — {acquisition}" if acquisition else name,
        text="\n".join([_text(description, "Caption"), " ".join(facts)]).strip(),
        images=[relpath],
        source=f"{SOURCE}, case {case_id}",
        metadata={
            "kind": "image",
            "case_id": case_id,
            "image_type": _text(record, "Type") or None,
            "modality": modality or None,
            "plane": plane or None,
            "age": age_field(_text(description, "Age")),
            "sex": sex_field(_text(description, "Sex")),
            "location": location or None,
            "location_category": location_category or None,
            "acr_codes": _text(description, "ACR Codes") or None,
        },
    )


def _read_cases(path: Path, descriptions: Path, image_docs: dict[str, Document], image_lines: dict[str, int],
                report: ImportReport) -> list[Document]:
    docs: list[Document] = []
    for line, record, case_id, doc_id in _keyed_records(path, "U_id", "medpix-case", "case", {}, report):
        case = record.get("Case")
        if not isinstance(case, dict):
            report.add_problem(path, line, doc_id, "missing field 'Case'; line skipped")
            continue
        sections = {key: text for source, key in CASE_SECTIONS if (text := _text(case, source))}
        if not sections:
            headers = ", ".join(source for source, _ in CASE_SECTIONS)
            report.add_problem(path, line, doc_id, f"case has no text (all of {headers} are empty); line skipped")
            continue

        images: list[str] = []
        modalities: list[str] = []
        for list_key, modality in IMAGE_LISTS:
            names = record.get(list_key) or []
            if not isinstance(names, list):
                report.add_problem(path, line, doc_id, f"field '{list_key}' is not a list of image names; ignored")
                continue
            if names:
                modalities.append(modality)
            for name in names:
                if not isinstance(name, str) or not name:
                    report.add_problem(path, line, doc_id, f"{list_key} entry {name!r} is not an image name; ignored")
                elif name in image_docs:
                    images.extend(image_docs[name].images)
                elif name in image_lines:
                    report.add_problem(path, line, doc_id, f"image {name} was not imported (see {descriptions.name} "
                                       f"line {image_lines[name]}); dropped from the case")
                else:
                    report.add_problem(path, line, doc_id, f"image {name} has no description in "
                                       f"{descriptions.name}; dropped from the case")

        topic = record.get("Topic") if isinstance(record.get("Topic"), dict) else {}
        docs.append(Document(
            id=doc_id,
            domain=DOMAIN,
            title=_text(case, "Title") or sections.get("diagnosis") or f"MedPix case {case_id}",
            text="\n\n".join(f"{source}: {sections[key]}" for source, key in CASE_SECTIONS if key in sections),
            images=images,
            source=f"{SOURCE}, case {case_id}",
            metadata={
                "kind": "case",
                "case_id": case_id,
                "diagnosis": sections.get("diagnosis"),
                "diagnosis_by": _text(case, "Diagnosis By") or None,
                "category": _text(topic, "Category") or None,
                "acr_code": _text(topic, "ACR Code") or None,
                "topic": _text(topic, "Title") or None,
                "modalities": modalities,
                "sections": sections,
            },
        ))
        report.imported += 1
    return docs
