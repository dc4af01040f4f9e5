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
`closed_questions` then asks closed questions of the imported images from the case fields (diagnosis
among the case's own differential, modality, plane), for benchmarks on real data.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from rag.corpus import (CorpusError, Document, QAItem, iter_jsonl_lines, parse_jsonl_line, read_documents,
                        write_jsonl)
from rag.text import content_words, sentences
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


# --- closed questions from the case fields ---------------------------------------------------------
# A benchmark on real data needs questions nobody here wrote the answers to: each described image is
# asked its case's diagnosis (distractors from that case's own differential), its modality and its
# plane. The answers come from MedPix's fields, never from a model.

DIAGNOSIS_QUESTION = "What is the diagnosis for this image?"
MODALITY_QUESTION = "What imaging modality is this?"
PLANE_QUESTION = "In which plane was this image acquired?"
MODALITY_OPTIONS: dict[str, str] = {"CT": "CT", "MR": "MRI"}  # the description's Type -> the option shown
# MedPix's Plane -> the option shown; "Transverse" is MedPix's other word for axial. Images in other
# planes (Lateral, PA, a photograph, "not specified") get no plane question: they have no fair option set.
PLANE_OPTIONS: dict[str, str] = {"axial": "axial", "transverse": "axial", "coronal": "coronal", "sagittal": "sagittal"}
DIAGNOSIS_OPTIONS = 4
_SOURCE_FIELD = {"diagnosis": "Case.Case Diagnosis (distractors: Case.Differential Diagnosis)",
                 "modality": "Type", "plane": "Description.Plane"}
_BULLET = re.compile(r"^[\s»•*>\-\uf06e]*(?:\d+[.)]\s*)?")
_REMARK = re.compile(r"\s*(?:\([^)]*\)?|\[[^\]]*\]?)")  # "(less likely)", "[fungus, TB]"
_HEAD = re.compile(r"^(?:differential diagnosis|ddx)\b[^:]*:\s*", re.IGNORECASE)
# Words of a differential line that mark it as commentary ("DDx of AP radiographs", "X vs. Y",
# "atypical dermoid is less likely given the history"), not as one diagnosis to offer.
_COMMENTARY = re.compile(r"\b(?:vs|versus|ddx|differential|includes?|likely|history|see)\b|\.\.\.|…|:", re.IGNORECASE)
MAX_OPTION_WORDS = 8
# Qualifiers that do not make a diagnosis another one ("X with or without Y" is still X).
_QUALIFIERS = {w[:5] for w in ("without", "possible", "probable", "suspected", "other")}
_NOT_A_DIAGNOSIS = {"n/a", "na", "none", "not applicable"}


def _stems(text: str) -> set[str]:
    """Word stems (the first five letters) of a diagnosis, so "metastasis" and "metastatic" meet."""
    return {w[:5] for w in content_words(text) if len(w) > 2} - _QUALIFIERS


def same_diagnosis(a: str, b: str) -> bool:
    """Whether two diagnosis phrases may name the same thing, so one cannot be the other's distractor:
    at least half the stems of the shorter one are in the other, with or without remarks in brackets.

    Erring towards "same": a distractor that is in truth a second right answer spoils a question,
    one dropped too many only makes it easier (the slot is filled from other cases' diagnoses)."""
    for x, y in ((a, b), (_REMARK.sub(" ", a), _REMARK.sub(" ", b))):
        sx, sy = _stems(x), _stems(y)
        if sx and sy and len(sx & sy) >= min(len(sx), len(sy)) / 2:
            return True
    return False


def _option_text(phrase: str) -> str:
    """A diagnosis as an option: its first sentence, without bullets, remarks in brackets or end
    punctuation (a remark such as "(less likely)" would give the answer away)."""
    first = sentences(phrase.strip())[0] if phrase.strip() else ""
    text = _REMARK.sub(" ", _BULLET.sub("", first))
    return re.sub(r"\s+", " ", text).strip(" .;:,-")


def differential_items(differential: str) -> list[str]:
    """The diagnoses a case's Differential Diagnosis lists, as option texts, in its order.

    MedPix writes them one per line (with bullets, numbers or none), as comma-separated lists, or as
    prose; a line with two or more commas is a list, a heading ("Lytic bone lesion: a, b") keeps
    only its list, and headings, commentary and prose are left out."""
    parts: list[str] = []
    for line in (_HEAD.sub("", raw).strip() for raw in differential.splitlines()):
        line = re.sub(r"\bvs\.", "vs", line, flags=re.IGNORECASE)  # "X vs. Y" is one (commentary) sentence
        for sentence in sentences(_REMARK.sub(" ", line)):
            if sentence.count(",") + sentence.count(";") >= 2 or len(differential.splitlines()) == 1:
                sentence = sentence.split(":", 1)[-1]
                parts += [p.strip().removeprefix("and ") for p in re.split(r"[,;]", sentence)]
            else:
                parts.append(sentence)
    items: list[str] = []
    for part in parts:
        text = _option_text(part)
        if (text.lower() not in _NOT_A_DIAGNOSIS and not _COMMENTARY.search(part) and _stems(text)
                and len(text.split()) <= MAX_OPTION_WORDS):
            items.append(text)
    return items


def _diagnosis_options(case: Document, answer: str, others: list[str],
                       rng: random.Random) -> tuple[list[str], int] | None:
    """The answer among distractors from the case's differential, topped up from other cases'
    diagnoses; (options in a seeded random order, how many came from the differential)."""
    raw_answer = case.metadata["sections"].get("diagnosis", "")
    distractors: list[str] = []
    for item in differential_items(case.metadata["sections"].get("differential_diagnosis", "")):
        if not same_diagnosis(item, raw_answer) and not any(same_diagnosis(item, d) for d in distractors):
            distractors.append(item)
    distractors = distractors[: DIAGNOSIS_OPTIONS - 1]
    from_differential = len(distractors)
    for other in rng.sample(others, len(others)):
        if len(distractors) == DIAGNOSIS_OPTIONS - 1:
            break
        if not same_diagnosis(other, raw_answer) and not any(same_diagnosis(other, d) for d in distractors):
            distractors.append(other)
    if len(distractors) < DIAGNOSIS_OPTIONS - 1:
        return None
    options = [answer, *distractors]
    rng.shuffle(options)
    return options, from_differential


def closed_questions(corpus: Path, images: Collection[str] | None = None, seed: int = 0,
                     split: str = "test") -> list[QAItem]:
    """Closed questions about the described images of an imported MedPix corpus (`import_medpix`'s
    corpus.jsonl): the case's diagnosis, the modality (CT or MRI) and the plane (axial, coronal,
    sagittal). Every question carries its image (relative to the corpus folder, like the documents')
    and its case document's id. `images`: ask only about these image paths (e.g. the ones a
    benchmark holds out of its index). `metadata["topic"]` names the question kind."""
    docs = read_documents(corpus, check_images=False)
    cases = {d.metadata["case_id"]: d for d in docs if d.metadata.get("kind") == "case"}
    answers = {cid: _option_text(c.metadata["sections"].get("diagnosis", "")) for cid, c in cases.items()}
    questions: list[QAItem] = []
    for doc in docs:
        if doc.metadata.get("kind") != "image" or (images is not None and doc.images[0] not in images):
            continue
        case = cases.get(doc.metadata["case_id"])
        if case is None:  # an image whose case was not imported has no diagnosis nor case document
            continue
        asked = []
        if answers[case.metadata["case_id"]]:
            others = [a for cid, a in sorted(answers.items()) if a and cid != case.metadata["case_id"]]
            made = _diagnosis_options(case, answers[case.metadata["case_id"]], others, random.Random(f"{seed}:{doc.id}"))
            if made:
                asked.append(("diagnosis", DIAGNOSIS_QUESTION, answers[case.metadata["case_id"]], made[0],
                              {"from_differential": made[1]}))
        modality = MODALITY_OPTIONS.get(doc.metadata.get("image_type") or "")
        if modality:
            asked.append(("modality", MODALITY_QUESTION, modality, list(MODALITY_OPTIONS.values()), {}))
        plane = PLANE_OPTIONS.get((doc.metadata.get("plane") or "").lower())
        if plane:
            asked.append(("plane", PLANE_QUESTION, plane, sorted(set(PLANE_OPTIONS.values())), {}))
        for topic, question, answer, options, extra in asked:
            questions.append(QAItem(id=f"{doc.id}-{topic}", question=question, answer=answer, doc_id=case.id,
                                    domain=DOMAIN, split=split, image=doc.images[0], options=options,
                                    metadata={"kind": "multiple_choice", "topic": topic, "image_doc": doc.id,
                                              "source_field": _SOURCE_FIELD[topic], **extra}))
    return questions
