"""Read Chinese TCM multiple-choice questions (TCMBench, CMMLU) as closed text questions.

- TCMBench (Yue et al., BIBM 2024), first level: one JSON object per file, `{"type", "prefix_prompt",
  "keywords", "example": [...]}`. Three shapes of example: A1/A2 (`FKU`) `{"question": stem and
  options "A．…" one per line, "answer": ["A"], "knowledge_point", "index"}`; A3/A4 (`CVR`) a shared
  case `share_content` with `question: [{"sub_question": stem and options, "answer"}]`; B1 (`KHC`)
  shared options in `share_content` with `question: [{"sub_question": stem, "answer"}]`.
  `knowledge_point` names the subject; materia medica is "中药学".
- CMMLU (Li et al., 2023), one CSV per subject: `,Question,A,B,C,D,Answer` (4 options).

Each question becomes a `QAItem` with the option texts (the letters are dropped: the prompt numbers
options itself) and the right one as its answer. `doc_id` is the source record (these questions come
with no document; an evaluation that needs one must say so), `domain` "tcm_herb", the subject and
the answer letter in `metadata`.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from rag.corpus import CorpusError, QAItem

MATERIA_MEDICA = "中药学"
DOMAIN = "tcm_herb"
LETTERS = "ABCDE"
# "A．发散，行气" or "A.乳痈": a letter, a full-width or ASCII full stop, the option text.
_OPTION = re.compile(r"^\s*([A-E])\s*[．.、]\s*(.+?)\s*$")
# Sub-questions are numbered "1)．" in the source; the number is not part of the question.
_NUMBER = re.compile(r"^\s*\d+\)\s*[．.]?\s*")


def _split_options(text: str) -> tuple[str, list[str]]:
    """(the text without its option lines, the options A, B, ... in order)."""
    stem, options = [], []
    for line in text.splitlines():
        match = _OPTION.match(line)
        if match:
            options.append(match.group(2))
        elif line.strip() and line.strip() != "（共用备选答案）":  # the B1 heading "shared options"
            stem.append(line.strip())
    return "\n".join(stem), options


def _item(qid: str, question: str, options: list[str], letter: str, where: str, metadata: dict[str, Any]) -> QAItem:
    if len(options) < 2 or len(set(options)) != len(options):
        raise CorpusError(f"{where}: expected distinct options 'A．…' one per line, found {options}")
    if len(letter) != 1 or LETTERS.find(letter) not in range(len(options)):
        raise CorpusError(f"{where}: answer {letter!r} is not one of the {len(options)} options")
    return QAItem(id=qid, question=question, answer=options[LETTERS.index(letter)], doc_id=qid, domain=DOMAIN,
                  split="test", options=options,
                  metadata={"kind": "multiple_choice", "answer_letter": letter, "no_document": True, **metadata})


def _answer_letter(answer: Any, where: str) -> str:
    if not isinstance(answer, list) or len(answer) != 1 or not isinstance(answer[0], str):
        raise CorpusError(f"{where}: expected one answer letter such as [\"A\"], found {answer!r}")
    return answer[0].strip()


def read_tcmbench(path: Path, knowledge_point: str | None = MATERIA_MEDICA) -> list[QAItem]:
    """The questions of one TCMBench first-level file (A1/A2, A3/A4 or B1) on `knowledge_point`
    (None: every subject). A group's sub-questions become one question each; an A3/A4 case is put
    before each of its sub-questions, a B1 group's shared options after each of its stems."""
    try:
        examples = json.loads(path.read_text(encoding="utf-8"))["example"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorpusError(f"{path}: not a TCMBench file with an 'example' list ({err})") from err
    source = f"tcmbench-{path.stem.split('_')[0].lower()}"
    items: list[QAItem] = []
    for number, example in enumerate(examples):
        subject = example.get("knowledge_point") or ""
        if knowledge_point is not None and subject != knowledge_point:
            continue
        where, meta = f"{path} example {number} (index {example.get('index')})", {"subject": subject, "source": source}
        qid = f"{source}-{example.get('index', number)}"
        if "share_content" not in example:  # A1/A2: one stem with its options
            stem, options = _split_options(example["question"])
            items.append(_item(qid, stem, options, _answer_letter(example.get("answer"), where), where, meta))
            continue
        shared_stem, shared_options = _split_options(example["share_content"])
        for k, sub in enumerate(example.get("question") or []):
            stem, options = _split_options(_NUMBER.sub("", sub.get("sub_question", "")))
            question = f"{shared_stem}\n{stem}" if shared_stem else stem
            items.append(_item(f"{qid}-{k + 1}", question, options or shared_options,
                               _answer_letter(sub.get("answer"), f"{where} sub-question {k + 1}"),
                               f"{where} sub-question {k + 1}", meta))
    return items


def read_cmmlu(path: Path) -> list[QAItem]:
    """The questions of one CMMLU subject CSV (columns Question, A, B, C, D, Answer)."""
    source = f"cmmlu-{path.stem.removeprefix('test_').removeprefix('dev_').replace('_', '-')}"
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CorpusError(f"{path}: cannot read the CSV ({err})") from err
    missing = {"Question", "A", "B", "C", "D", "Answer"} - set(rows[0] if rows else {})
    if missing:
        raise CorpusError(f"{path}: missing column(s) {sorted(missing)}")
    items = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        options = [row[letter].strip() for letter in "ABCD"]
        items.append(_item(f"{source}-{row.get('') or line - 2}", row["Question"].strip(), options,
                           row["Answer"].strip(), f"{path}:{line}", {"subject": "traditional_chinese_medicine",
                                                                     "source": source}))
    return items
