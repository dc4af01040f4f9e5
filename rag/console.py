"""How an index bundle and a cited answer read on a terminal.

`medrag index build/info`, `medrag ask` and the demo print the same summaries; they live here once so
the command line and the demo (a library module, which must not import the command line) share them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for the annotation: rag.pipeline loads torch
    from rag.pipeline import Answer


def print_index_info(info: dict[str, Any]) -> None:
    """A bundle's `bundle_info()`: encoders, counts per domain, vector index, heads, routing and selection."""
    print(f"index {info['path']} ({info['version']}, format {info['format_version']})")
    enc = info["encoders"]
    print(f"  encoders: text {enc['text']['name']} [{enc['text']['fingerprint']}], "
          f"image {enc['image']['name']} [{enc['image']['fingerprint']}]")
    counts = info.get("counts") or {}
    print(f"  {counts.get('documents', 0)} documents, {counts.get('images', 0)} images")
    for domain, c in (counts.get("per_domain") or {}).items():
        print(f"    {domain:<14} docs {c['documents']:>5}  text {c['text']:>5}  joint {c['joint']:>5}  image {c['image']:>6}")
    vector_index = info.get("vector_index") or {}
    if vector_index:
        built = sorted({t for c in vector_index.get("channels", {}).values() for t in c["type"]})
        print(f"  vector index: {vector_index['type']} x{vector_index['shards']} shard(s)"
              + (f", built as {'/'.join(built)}" if built and built != [vector_index["type"]] else ""))
    print(f"  router val accuracy: {info['heads']['router_val_accuracy']}, "
          f"aligner val recall@1: {info['heads']['aligner_val_recall_at_1']}")
    routing = info.get("routing") or {}
    print(f"  routing threshold {routing.get('threshold')} (calibrated on {routing.get('calibrated_on', 0)} val questions)")
    sel = info.get("selection") or {}
    print(f"  selection: rule {sel.get('rule')}, gamma {sel.get('gamma')}, rho {sel.get('rho')}, k {sel.get('k')}, "
          f"alpha {sel.get('alpha')}")
    if info.get("seconds") is not None:
        print(f"  built in {info['seconds']} s")


def print_answer(answer: Answer, gold: str | None = None) -> None:
    """A `rag.pipeline.Answer`: routing, the evidence kept (cited items starred), the text, citations, time."""
    where = f"routed to {answer.domain} ({answer.domain_confidence:.2f})" if answer.domain else "no retrieval"
    print(f"  {where}; kept {len(answer.evidence)} evidence item(s): {answer.selection}")
    cited = {c.number for c in answer.citations}
    for e in answer.evidence:
        mark = "*" if e.number in cited else " "
        print(f"   {mark}[{e.number}] {e.score:.4f} {e.id:<28} {e.title[:56]}")
    print(f"  A: {answer.text}" + (f"   (gold: {gold})" if gold is not None else ""))
    if answer.citations:
        print("  cites: " + ", ".join(f"[{c.number}] {c.evidence_id} ({c.label()})" for c in answer.citations))
    print(f"  {answer.timings['total'] * 1000:.0f} ms ({answer.mode})")
