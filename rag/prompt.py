"""Evidence prompts and citations (docs/design.md §5 step 4).

The prompt numbers the evidence [1]..[k] and asks for an answer that cites it. Each evidence item is
cut to the sentences that share the most words with the question (and options), in document order:
a 135M model reads 10 short, on-topic items far better than 10 whole documents, and the prompt stays
short enough for a CPU. The same builder serves answering, preference-pair building and evaluation,
so training prompts carry exactly as many evidence items as test prompts (docs/design.md §7).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from rag.text import content_words, sentences

SYSTEM = ("You are a careful medical assistant. Answer the question using the numbered evidence and cite the "
          "items you used like [1]. If the evidence does not answer the question, say so.")
SYSTEM_NO_EVIDENCE = "You are a careful medical assistant. Answer the question briefly."
ABSTAIN_TEXT = "The evidence does not answer this question."
SNIPPET_WORDS = 60
_CITATION = re.compile(r"\[(\d{1,3})\]")


@dataclass
class Prompt:
    """Chat messages in the list-of-blocks format plus the images, in the order of their image blocks."""

    messages: list[dict[str, Any]]
    images: list[Image.Image] = field(default_factory=list)


@dataclass(frozen=True)
class EvidenceText:
    number: int        # 1-based, as cited
    title: str
    snippet: str


def snippet(text: str, query: str, max_words: int = SNIPPET_WORDS) -> str:
    """The sentences of `text` most related to `query`, kept in document order, within `max_words`."""
    parts = sentences(text)
    wanted = content_words(query)
    ranked = sorted(range(len(parts)), key=lambda i: (-len(content_words(parts[i]) & wanted), i))
    chosen, used = [], 0
    for i in ranked:
        n = len(parts[i].split())
        if used and used + n > max_words:
            continue
        chosen.append(i)
        used += n
        if used >= max_words:
            break
    out = " ".join(parts[i] for i in sorted(chosen))
    words = out.split()
    return out if len(words) <= max_words else " ".join(words[:max_words]) + " …"


def format_options(options: list[str]) -> str:
    return "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))


def build_prompt(question: str, evidence: list[EvidenceText], image: Image.Image | None = None,
                 options: list[str] | None = None) -> Prompt:
    """The chat prompt for one question; `evidence=[]` gives the no-retrieval prompt."""
    blocks: list[dict[str, Any]] = []
    if image is not None:
        blocks.append({"type": "image"})
    parts = []
    if evidence:
        parts.append("Evidence:\n" + "\n".join(f"[{e.number}] {e.title}: {e.snippet}" for e in evidence))
    parts.append(f"Question: {question}")
    if options:
        parts.append("Options:\n" + format_options(options))
        parts.append("Answer with the text of one option" + (" and cite the evidence." if evidence else "."))
    blocks.append({"type": "text", "text": "\n\n".join(parts)})
    messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM if evidence else SYSTEM_NO_EVIDENCE}]},
                {"role": "user", "content": blocks}]
    return Prompt(messages=messages, images=[image] if image is not None else [])


def parse_citations(text: str, n_evidence: int) -> list[int]:
    """Evidence numbers cited as [n] in `text`, in order of first mention, ignoring numbers out of range."""
    seen: list[int] = []
    for match in _CITATION.finditer(text):
        number = int(match.group(1))
        if 1 <= number <= n_evidence and number not in seen:
            seen.append(number)
    return seen


def match_option(text: str, options: list[str]) -> int | None:
    """Which option a generated answer names: a leading letter ("B", "B.", "(B)"), the option's text,
    or else the option sharing the most words with it; None when nothing matches."""
    stripped = text.strip()
    letter = re.match(r"^\(?([A-Z])[\).:\s]", stripped + " ")
    if letter and ord(letter.group(1)) - 65 < len(options):
        return ord(letter.group(1)) - 65
    lowered = stripped.lower()
    contained = [i for i, o in enumerate(options) if o.lower() in lowered]
    if contained:
        return max(contained, key=lambda i: len(options[i]))
    overlap = [len(content_words(o) & content_words(stripped)) for o in options]
    best = max(range(len(options)), key=lambda i: overlap[i])
    return best if overlap[best] > 0 else None


def stating_evidence(answer: str, evidence: list[EvidenceText], full_texts: list[str]) -> list[int]:
    """Evidence numbers whose document states the answer verbatim."""
    lowered = answer.lower().strip()
    return [e.number for e, t in zip(evidence, full_texts) if lowered and lowered in t.lower()]


def checkable_answer(answer: str) -> bool:
    """Whether a document can be said to state `answer` or not: "yes" or "no" is in almost any text."""
    return bool(content_words(answer) - {"yes", "no"})


def supporting_evidence(answer: str, evidence: list[EvidenceText], full_texts: list[str]) -> list[int]:
    """Evidence numbers whose document states the answer (verbatim, else by most shared words): the
    citation we attach when the model's text did not cite anything itself."""
    verbatim = stating_evidence(answer, evidence, full_texts)
    if verbatim:
        return verbatim[:3]
    wanted = content_words(answer)
    overlap = [(len(content_words(t) & wanted), -e.number) for e, t in zip(evidence, full_texts)]
    best = max(range(len(evidence)), key=lambda i: overlap[i]) if evidence else None
    return [evidence[best].number] if best is not None else []
