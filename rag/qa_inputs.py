"""Questions and their pictures as training and evaluation both read them.

Preference pairs, reader SFT and the factuality experiment draw the same closed questions from a QA
file and load their images the same way; this module sits below all of them so that training never
imports evaluation (or the reverse).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from rag.corpus import Document, QAItem, read_qa
from rag.encoders import load_rgb
from rag.scoring import options_kind


def stratified_sample(items: list[QAItem], n: int, seed: int) -> list[QAItem]:
    """`n` items spread over domains in proportion to their share (all items when n is 0 or too big)."""
    if n <= 0 or n >= len(items):
        return list(items)
    rng = random.Random(seed)
    by_domain: dict[str, list[QAItem]] = {}
    for item in items:
        by_domain.setdefault(item.domain, []).append(item)
    chosen: list[QAItem] = []
    for domain, group in sorted(by_domain.items()):
        share = max(1, round(n * len(group) / len(items)))
        chosen.extend(rng.sample(group, min(share, len(group))))
    rng.shuffle(chosen)
    return chosen[:n]


def closed_questions(path: str | Path, splits: list[str], n: int = 0, seed: int = 0) -> list[QAItem]:
    """The questions of `splits` whose answer is one of their options, `n` of them stratified by domain (0: all)."""
    items = [q for q in read_qa(path) if q.split in splits and q.options and q.answer in q.options]
    if not items:
        raise ValueError(f"{path} has no closed questions (answer among the options) in split(s) {splits}")
    return stratified_sample(items, n, seed)


# Question templates (domain -> topics) that no training stage sees: accuracy on them, reported apart,
# tells reading the evidence from learning the sample's phrasings. A QA file without topics holds none out.
HELD_OUT_TOPICS = {"radiology": ("lobe", "laterality"), "ophthalmology": ("visual_acuity",),
                   "pathology": ("specimen", "margin"), "tcm_herb": ("cautions", "actions"),
                   "tcm_tongue": ("pulse", "cracks")}


def is_held_out(item: QAItem) -> bool:
    return item.metadata.get("topic") in HELD_OUT_TOPICS.get(item.domain, ())


def question_kind(item: QAItem) -> str:
    """"yes_no" or "multiple_choice": the QA file's own label, else read from the options."""
    kind = item.metadata.get("kind")
    if kind in ("yes_no", "multiple_choice"):
        return kind
    return options_kind(item.options or [])


def qa_picture(item: QAItem, qa_dir: Path) -> Image.Image | None:
    """The question's image, loaded once (QA image paths are relative to the QA file's folder)."""
    if not item.image:
        return None
    path = Path(qa_dir) / item.image
    if not path.is_file():
        raise FileNotFoundError(f"QA item {item.id}: image {path} not found (paths are relative to the QA file)")
    return load_rgb(path)


def image_pool(docs: Iterable[Document]) -> dict[str, list[Path]]:
    """Domain -> the documents' image files: where replacement images from other domains come from."""
    pool: dict[str, list[Path]] = {}
    for doc in docs:
        pool.setdefault(doc.domain, []).extend(Path(p) for p in doc.images)
    return {d: sorted(paths) for d, paths in pool.items() if paths}
