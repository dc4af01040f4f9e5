"""`medrag retrieve` and `medrag ask`: evidence for a question, and a cited answer from it."""

from __future__ import annotations

import argparse

from rag.cli.output import print_json
from rag.console import print_answer
from rag.defaults import SAMPLE_INDEX, resolve_generator_name


# --- retrieve -------------------------------------------------------------------------------------

def register_retrieve(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("retrieve", help="retrieve evidence for a question and/or an image")
    p.add_argument("question", nargs="?", default=None)
    p.add_argument("--index", default=str(SAMPLE_INDEX))
    p.add_argument("--image", help="query image file")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--domain", action="append", help="search only this domain (repeatable); skips routing")
    p.add_argument("--channel", action="append", choices=["text", "bm25", "joint", "image"])
    p.add_argument("--no-routing", action="store_true", help="search all domains as one flat collection")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE", help="metadata equality filter (repeatable)")
    p.add_argument("--rule", choices=["gap", "relative", "fixed", "rule"], help="context selection rule")
    p.add_argument("--nprobe", type=int, help="IVF indexes: lists searched per query (default: the bundle's)")
    p.add_argument("--ef-search", type=int, help="HNSW indexes: candidate list per query (default: the bundle's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_retrieve)


def cmd_retrieve(args: argparse.Namespace) -> int:
    from rag.retriever import Retriever
    from rag.selection import select_hits

    search_params = {k: v for k, v in (("nprobe", args.nprobe), ("ef_search", args.ef_search)) if v is not None}
    retriever = Retriever.load(args.index, search_params=search_params)
    filters = dict(f.split("=", 1) for f in args.filter or [])
    result = retriever.retrieve(args.question, image=args.image, k=args.k, domains=args.domain or None,
                                channels=args.channel or None, routing=not args.no_routing, filters=filters or None)
    _, selection = select_hits(result.hits, retriever.bundle.selection, rule=args.rule)
    if args.json:
        print_json(result.to_json(selection))
        return 0
    r = result.routing
    print(f"routed to {r.domain} (confidence {r.confidence:.2f}, {r.mode}; searched {', '.join(r.searched)})")
    print(f"channels: {', '.join(result.channels)}; {result.timings['total'] * 1000:.1f} ms")
    for i, hit in enumerate(result.hits, 1):
        mark = "*" if i <= selection.k else " "
        print(f"{mark}{i:>2}. {hit.score:.4f}  {hit.doc.id:<28} {hit.doc.title[:60]}")
    print(f"selection: keep {selection.k} ({selection.reason})")
    return 0


# --- ask ------------------------------------------------------------------------------------------

def register_ask(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("ask", help="answer a question (optionally about an image) from evidence, with citations")
    p.add_argument("question")
    p.add_argument("--index", default=str(SAMPLE_INDEX))
    p.add_argument("--image", help="image file the question is about")
    p.add_argument("--option", action="append", help="an answer option of a closed question (repeatable)")
    p.add_argument("--mode", choices=["auto", "generate", "options"], default="auto",
                   help="options: score each option by log-probability; generate: free text (default: auto)")
    p.add_argument("--generator", help="default VLM name, saved model folder or HF model id (default: the default "
                   "VLM with the trained projector and adapter it ships with)")
    p.add_argument("-k", type=int, help="keep exactly k evidence items (default: adaptive selection)")
    p.add_argument("--no-retrieval", action="store_true", help="answer without evidence (baseline)")
    p.add_argument("--no-abstain", action="store_true", help="answer even when the evidence is weak")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ask)


def cmd_ask(args: argparse.Namespace) -> int:
    from rag.pipeline import MedRAG

    rag = MedRAG.load(args.index, generator=resolve_generator_name(args.generator))
    answer = rag.ask(args.question, image=args.image, options=args.option or None, mode=args.mode, k=args.k,
                     retrieval=not args.no_retrieval, abstain=not args.no_abstain, max_new_tokens=args.max_new_tokens)
    if args.json:
        print_json(answer.to_json())
    else:
        print(f"Q: {args.question}")
        print_answer(answer)
    return 0
