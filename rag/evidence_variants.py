"""The gathered evidence with the question's own document put in or taken out.

Two users: the experiment's gold-evidence ("oracle") row, which asks whether the model reads a
document that surely holds the answer, and reader training (RAFT, Zhang et al., 2024), which mixes
prompts with the gold document among distractors, distractors only, and no evidence. Both keep the
number of items that selection chose, so a prompt looks like a test-time prompt.
"""

from __future__ import annotations

from dataclasses import replace

from rag.corpus import Document
from rag.fusion import Hit
from rag.pipeline import Context, MedRAG


def _renumbered(context: Context, kept: list[Hit], question: str, options: list[str] | None) -> Context:
    evidence = [MedRAG.evidence_item(i + 1, hit, question, options) for i, hit in enumerate(kept)]
    return replace(context, kept=kept, evidence=evidence)


def with_gold(context: Context, gold: Document, question: str, options: list[str] | None,
              position: int | None = None) -> Context:
    """`context` with `gold` among its items: left where retrieval put it, else at `position`
    (default: in place of the weakest item), the weakest item dropped to keep the count."""
    if any(hit.doc.id == gold.id for hit in context.kept):
        return context
    kept = list(context.kept)
    gold_hit = Hit(doc_number=-1, doc=gold, score=0.0)
    if not kept:
        return _renumbered(context, [gold_hit], question, options)
    where = len(kept) - 1 if position is None else min(position, len(kept) - 1)
    kept = kept[:-1]
    kept.insert(where, gold_hit)
    return _renumbered(context, kept, question, options)


def without_gold(context: Context, gold_id: str, question: str, options: list[str] | None) -> Context:
    """`context` with the question's own document removed (possibly leaving no evidence)."""
    kept = [hit for hit in context.kept if hit.doc.id != gold_id]
    return context if len(kept) == len(context.kept) else _renumbered(context, kept, question, options)


def gold_position(context: Context, gold_id: str) -> int | None:
    """The 1-based evidence number of the question's own document, or None when it is not there."""
    return next((e.number for e in context.evidence if e.id == gold_id), None)
