"""The corpus and QA data model (docs/design.md §3): typed records, JSONL reading and writing, validation.

A corpus is a JSONL file of documents plus a folder of images whose paths are relative to the
file. A QA set is a JSONL file of questions, each tied to one document and one split. Validation
reports *every* problem with its line number instead of stopping at the first, because a
researcher fixing a 10,000-line corpus wants one list, not a hundred reruns.
"""

from __future__ import annotations

import codecs
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

DOMAINS: tuple[str, ...] = ("radiology", "ophthalmology", "pathology", "tcm_herb", "tcm_tongue")
SPLITS: tuple[str, ...] = ("train", "val", "test", "added")
"""`added` marks documents held out of all training, to be added to the index later (docs/design.md §7)."""

# A decompression bomb is an image whose header claims far more pixels than any scan we index.
MAX_IMAGE_PIXELS = 64_000_000


class CorpusError(ValueError):
    """A corpus or QA file cannot be used; the message names the file, line and problem."""


@dataclass
class Document:
    id: str
    domain: str
    title: str
    text: str
    images: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QAItem:
    id: str
    question: str
    answer: str
    doc_id: str
    domain: str
    split: str
    image: str | None = None
    options: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one line of a JSONL file."""

    path: str
    line: int
    record_id: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}"
        rid = f" [{self.record_id}]" if self.record_id else ""
        return f"{where}{rid}: {self.message}"


@dataclass
class ValidationReport:
    path: str
    records: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad_lines(self) -> set[int]:
        return {p.line for p in self.problems}


def iter_jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw bytes) for every non-blank line."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if raw.strip():
                yield number, raw


def parse_jsonl_line(path: Path, number: int, raw: bytes) -> tuple[dict[str, Any] | None, Problem | None]:
    """Decode one JSONL line into an object, or say precisely why it cannot be."""
    if number == 1:
        # Editors on Windows (and Excel's "UTF-8 CSV") start files with a byte-order mark.
        raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, Problem(str(path), number, None,
                             f"invalid UTF-8 at byte {exc.start}; re-save the file as UTF-8")
    try:
        record = json.loads(text)
        # JSON's \ud800-style escapes can smuggle in unpaired surrogates, which no UTF-8 file (the
        # index's document store included) can hold; re-encoding now finds them before a write fails.
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError as exc:
        return None, Problem(str(path), number, None, f"malformed JSON: {exc.msg.removesuffix(' at')} (column {exc.colno})")
    except RecursionError:
        return None, Problem(str(path), number, None, "JSON nested too deeply to read; flatten the record")
    except UnicodeEncodeError:
        return None, Problem(str(path), number, None,
                             "a string holds an unpaired surrogate escape (\\ud800-\\udfff), which is not text; "
                             "fix the escape or remove it")
    if not isinstance(record, dict):
        return None, Problem(str(path), number, None, "line is JSON but not an object")
    return record, None


def _check_types(record: dict[str, Any], spec: dict[str, tuple[type, ...]], required: Iterable[str]) -> list[str]:
    errors = []
    for key in required:
        if key not in record or record[key] is None:
            errors.append(f"missing field '{key}'")
    for key, types in spec.items():
        value = record.get(key)
        if value is not None and not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            errors.append(f"field '{key}' must be {names}, got {type(value).__name__}")
    return errors


def _shown(text: str, limit: int = 120) -> str:
    """A path as it can be printed in one line of a report: escaped, and shortened if huge."""
    shown = text.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= limit else f"{shown[:limit]}… ({len(text)} characters)"


def resolve_image(corpus_dir: Path, relpath: str) -> tuple[Path | None, str | None]:
    """Resolve an image path against the corpus folder; refuse absolute paths and escapes.

    Symlinks are resolved before the containment check, so a link pointing outside is an escape too.
    """
    if not relpath or os.path.isabs(relpath):
        return None, f"image path '{_shown(relpath)}' must be relative to the corpus folder"
    root = corpus_dir.resolve()
    try:
        target = (corpus_dir / relpath).resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        # A NUL byte (ValueError), a name too long for the file system (OSError) or a symlink loop
        # (RuntimeError): the path cannot name a file here.
        return None, f"image path '{_shown(relpath)}' cannot be resolved ({exc.__class__.__name__}: {_shown(str(exc))})"
    if target != root and root not in target.parents:
        return None, f"image path '{_shown(relpath)}' escapes the corpus folder {root}"
    return target, None


def check_image(path: Path) -> str | None:
    """Return why the file is not a usable image, or None. Fully decodes it (a header can lie)."""
    try:
        if not path.is_file():
            return f"image file not found: {_shown(str(path))}"
    except OSError as exc:
        return f"image file cannot be read: {_shown(str(path))} ({exc.strerror})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    return f"image {path.name} is {img.width}x{img.height}, over {MAX_IMAGE_PIXELS} pixels"
                img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return f"image {path.name} looks like a decompression bomb; refusing to decode it"
    except Exception as exc:  # PIL raises many types for corrupt data; all mean the same here
        return f"unreadable or corrupt image {path.name} ({type(exc).__name__}: {exc})"
    return None


_DOC_REQUIRED = ("id", "domain", "title", "text")
_DOC_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "domain": (str,), "title": (str,), "text": (str,), "images": (list,),
    "names": (dict,), "source": (str,), "metadata": (dict,),
}


def _doc_problems(record: dict[str, Any], corpus_dir: Path, check_images: bool) -> list[str]:
    errors = _check_types(record, _DOC_TYPES, _DOC_REQUIRED)
    if errors:
        return errors
    # Names feed the lexical channel's alias table, which needs text on both sides.
    errors += [f"names['{key}'] must be a string, got {type(value).__name__}"
               for key, value in (record.get("names") or {}).items() if not isinstance(value, str)]
    if not record["id"].strip():
        errors.append("empty id")
    if record["domain"] not in DOMAINS:
        errors.append(f"unknown domain '{record['domain']}' (expected one of {', '.join(DOMAINS)})")
    if not record["text"].strip():
        errors.append("empty text")
    for rel in record.get("images") or []:
        if not isinstance(rel, str):
            errors.append(f"image entry {rel!r} is not a string path")
            continue
        target, why = resolve_image(corpus_dir, rel)
        if why:
            errors.append(why)
        elif check_images:
            why = check_image(target)
            if why:
                errors.append(why)
    return errors


def validate_corpus(path: str | Path, check_images: bool = True) -> ValidationReport:
    """Check every line of a corpus JSONL file and return all problems found."""
    path = Path(path)
    return _validate_jsonl(path, "corpus file not found", lambda record: _doc_problems(record, path.parent, check_images))


_QA_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "question": (str,), "answer": (str,), "doc_id": (str,), "domain": (str,),
    "split": (str,), "image": (str,), "options": (list,), "metadata": (dict,),
}


def validate_qa(path: str | Path, doc_ids: set[str] | None = None, check_images: bool = True) -> ValidationReport:
    """Check a QA JSONL file; with `doc_ids`, also that every item points at a known document."""
    path = Path(path)
    return _validate_jsonl(path, "QA file not found",
                           lambda record: _qa_problems(record, path.parent, doc_ids, check_images))


def _qa_problems(record: dict[str, Any], qa_dir: Path, doc_ids: set[str] | None, check_images: bool) -> list[str]:
    errors = _check_types(record, _QA_TYPES, ("id", "question", "answer", "doc_id", "domain", "split"))
    if errors:
        return errors
    if not record["question"].strip():
        errors.append("empty question")
    if record["domain"] not in DOMAINS:
        errors.append(f"unknown domain '{record['domain']}'")
    if record["split"] not in SPLITS:
        errors.append(f"unknown split '{record['split']}' (expected one of {', '.join(SPLITS)})")
    options = record.get("options")
    if options is not None and record["answer"] not in options:
        errors.append(f"answer '{record['answer']}' is not one of the options")
    if doc_ids is not None and record["doc_id"] not in doc_ids:
        errors.append(f"doc_id '{record['doc_id']}' is not in the corpus")
    if record.get("image"):
        target, why = resolve_image(qa_dir, record["image"])
        if why is None and check_images:
            why = check_image(target)
        if why:
            errors.append(why)
    return errors


def _validate_jsonl(path: Path, missing: str, record_problems: Callable[[dict[str, Any]], list[str]]) -> ValidationReport:
    """Every problem of a JSONL file of records with unique `id`s: unreadable lines, what
    `record_problems` finds in each record, and repeated ids."""
    report = ValidationReport(str(path))
    if not path.is_file():
        report.problems.append(Problem(str(path), 0, None, missing))
        return report
    seen: dict[str, int] = {}
    for number, raw in iter_jsonl_lines(path):
        report.records += 1
        record, problem = parse_jsonl_line(path, number, raw)
        if problem:
            report.problems.append(problem)
            continue
        rid = record.get("id") if isinstance(record.get("id"), str) else None
        for message in record_problems(record):
            report.problems.append(Problem(str(path), number, rid, message))
        if rid is not None:
            if rid in seen:
                report.problems.append(Problem(str(path), number, rid, f"duplicate id (first on line {seen[rid]})"))
            else:
                seen[rid] = number
    return report


def _good_records(path: Path, report: ValidationReport) -> Iterator[dict[str, Any]]:
    """The records of the lines `report` found no problem with."""
    bad = report.bad_lines()
    for number, raw in iter_jsonl_lines(path):
        if number not in bad:
            record, _ = parse_jsonl_line(path, number, raw)
            yield record


def _from_record(cls: type, record: dict[str, Any]) -> Any:
    # Unknown keys are ignored; a null optional field means "absent", so it gets its default
    # (an empty list, not None, is what the rest of the code can iterate).
    return cls(**{k: v for k, v in record.items() if k in cls.__dataclass_fields__ and v is not None})


def read_documents(path: str | Path, skip_invalid: bool = False, check_images: bool = True,
                   report: ValidationReport | None = None) -> list[Document]:
    """Read a corpus. Raises CorpusError listing every problem unless `skip_invalid`, which drops bad lines.

    Pass the `report` of an earlier `validate_corpus` of the same file to avoid decoding every image twice.
    """
    path = Path(path)
    report = report or validate_corpus(path, check_images=check_images)
    if report.problems and not skip_invalid:
        raise CorpusError(format_problems(report))
    return [_from_record(Document, record) for record in _good_records(path, report)]


def read_qa(path: str | Path, skip_invalid: bool = False, doc_ids: set[str] | None = None) -> list[QAItem]:
    path = Path(path)
    report = validate_qa(path, doc_ids=doc_ids, check_images=False)
    if report.problems and not skip_invalid:
        raise CorpusError(format_problems(report))
    return [_from_record(QAItem, record) for record in _good_records(path, report)]


def write_jsonl(path: str | Path, records: Iterable[Document | QAItem | dict[str, Any]]) -> int:
    """Write records atomically (temp file + rename), so a crash never leaves half a corpus."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            data = rec.to_json() if hasattr(rec, "to_json") else rec
            fh.write(json.dumps(data, ensure_ascii=False) + "\n")
            count += 1
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return count


def copy_corpus_slice(corpus_dir: str | Path, target: str | Path, name: str, rows: slice,
                      source: str = "corpus.jsonl") -> Path:
    """Copy the records `rows` of `corpus_dir/source`, with their images, to `target/name`
    (image paths stay relative to the file): a smaller corpus for a trial build or an `index add`."""
    corpus_dir, target = Path(corpus_dir), Path(target)
    lines = (corpus_dir / source).read_text(encoding="utf-8").splitlines()[rows]
    for line in lines:
        for rel in json.loads(line)["images"]:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(corpus_dir / rel, target / rel)
    target.mkdir(parents=True, exist_ok=True)
    (target / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target / name


def format_problems(report: ValidationReport, limit: int | None = None) -> str:
    shown = report.problems if limit is None else report.problems[:limit]
    lines = [f"{len(report.problems)} problem(s) in {report.path}:"] + [f"  {p}" for p in shown]
    if limit is not None and len(report.problems) > limit:
        lines.append(f"  … and {len(report.problems) - limit} more")
    return "\n".join(lines)
