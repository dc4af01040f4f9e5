"""`medrag index build|info|verify|add|remove`: index bundles made, inspected, checked and kept current."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rag.cli.output import print_json
from rag.console import print_index_info
from rag.defaults import SAMPLE_SPEC

if TYPE_CHECKING:  # for annotations only: the command imports its libraries when it runs
    from rag.index_build import IndexSpec


def register(commands: argparse._SubParsersAction) -> None:
    index = commands.add_parser("index", help="build and maintain index bundles").add_subparsers(dest="action", required=True)
    for add in (_add_build, _add_info, _add_verify, _add_add, _add_remove):
        add(index)


# --- index build ----------------------------------------------------------------------------------

# `index build` flag (argparse dest) -> field of the spec's vector_index block
VECTOR_INDEX_FLAGS = {"index_type": "type", "shards": "shards", "nlist": "nlist", "nprobe": "nprobe",
                      "hnsw_m": "hnsw_m", "ef_construction": "ef_construction", "ef_search": "ef_search",
                      "pq_m": "pq_m", "pq_bits": "pq_bits", "train_size": "train_size"}


def _add_build(index: argparse._SubParsersAction) -> None:
    p = index.add_parser("build", help="validate, embed, train heads, calibrate, and write a bundle atomically")
    p.add_argument("--spec", help=f"index spec (YAML/JSON); e.g. {SAMPLE_SPEC} builds the sample index")
    p.add_argument("--corpus", help="corpus JSONL (overrides the spec)")
    p.add_argument("--qa", help="QA JSONL: train questions teach the text router, val calibrates selection")
    p.add_argument("--out", help="bundle folder, e.g. indexes/NAME")
    p.add_argument("--text-encoder", help="text encoder name (default all-MiniLM-L6-v2; any sentence-transformers "
                                          "id/path or open_clip:NAME[@TAG])")
    p.add_argument("--image-encoder", help="image encoder name (default efficientnet-lite0, or open_clip:NAME[@TAG])")
    p.add_argument("--seed", type=int)
    p.add_argument("--skip-bad", action="store_true", help="leave out bad records (reported) instead of stopping")
    p.add_argument("--json", action="store_true")
    g = p.add_argument_group("vector index (override the spec's vector_index block)")
    g.add_argument("--index-type", choices=["flat", "hnsw", "ivf-flat", "ivf-pq"],
                   help="exact flat (default; < ~100k vectors per channel), hnsw (lowest latency), ivf-flat, "
                        "or ivf-pq (least memory)")
    g.add_argument("--shards", type=int, help="FAISS files per domain-channel, searched as one (default 1)")
    g.add_argument("--nlist", type=int, help="IVF lists per shard (default ~4*sqrt(vectors); fewer when too few "
                                             "vectors to train them)")
    g.add_argument("--nprobe", type=int, help="IVF lists searched per query (default 16; retrieve --nprobe overrides)")
    g.add_argument("--hnsw-m", type=int, help="HNSW links per node (default 32)")
    g.add_argument("--ef-construction", type=int, help="HNSW build-time candidate list (default 40)")
    g.add_argument("--ef-search", type=int, help="HNSW query-time candidate list (default 64; retrieve --ef-search "
                                                 "overrides)")
    g.add_argument("--pq-m", type=int, help="IVF-PQ sub-quantizers, must divide the dimension (default dim/4)")
    g.add_argument("--pq-bits", type=int, help="IVF-PQ bits per code (default 8)")
    g.add_argument("--train-size", type=int, help="vectors sampled to train IVF (default 50 per list)")
    g = p.add_argument_group("build engine")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="embed in this process (default) or with Ray Data on a Ray cluster (pip install 'medvlm-rag[ray]')")
    g.add_argument("--ray-address", help="Ray cluster to join: 'auto' (after `ray start --head`), ray://HOST:10001; "
                                         "default: start a local Ray")
    g.add_argument("--device", help="encoder device, e.g. cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_index_build)


def _spec_from_args(args: argparse.Namespace) -> IndexSpec:
    """The spec file's settings (or the defaults) with every flag given on the command line on top."""
    from rag.index_build import IndexSpec
    from rag.vector_index import VectorIndexConfig

    spec = IndexSpec.from_file(args.spec) if args.spec else IndexSpec()
    for field in ("corpus", "qa", "out", "text_encoder", "image_encoder", "seed"):
        value = getattr(args, field, None)
        if value is not None:
            setattr(spec, field, value)
    overrides = {key: getattr(args, flag) for flag, key in VECTOR_INDEX_FLAGS.items() if getattr(args, flag, None) is not None}
    if overrides:
        spec.vector_index = VectorIndexConfig.from_json({**spec.vector_index.to_json(), **overrides}, "medrag index build")
    if not spec.corpus:
        raise ValueError("medrag index build: give --corpus C.jsonl or --spec FILE naming a corpus")
    if not spec.out:
        raise ValueError("medrag index build: give --out DIR (or `out:` in the spec)")
    return spec


def cmd_index_build(args: argparse.Namespace) -> int:
    from rag.index_build import build_index, bundle_info
    from sample_corpus.build import ensure_sample_corpus

    spec = _spec_from_args(args)
    if spec.generate_sample:
        ensure_sample_corpus(spec.corpus, spec.sample_seed)
    started = time.perf_counter()
    try:
        build_index(spec.corpus, spec.out, spec=spec, qa=spec.qa, on_bad_record="skip" if args.skip_bad else "stop",
                    progress=not args.json, engine=args.engine, ray_address=args.ray_address, device=args.device)
    except ImportError as exc:
        if args.engine != "ray":
            raise
        print(f"medrag: error: {exc}", file=sys.stderr)  # the message says how to install Ray
        return 2
    info = bundle_info(spec.out)
    info["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print_json(info)
    else:
        print_index_info(info)
    return 0


# --- index info | verify --------------------------------------------------------------------------

def _add_info(index: argparse._SubParsersAction) -> None:
    p = index.add_parser("info", help="show what a bundle holds")
    p.add_argument("index")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_index_info)


def cmd_index_info(args: argparse.Namespace) -> int:
    from rag.index_build import bundle_info

    info = bundle_info(args.index)
    print_json(info) if args.json else print_index_info(info)
    return 0


def _add_verify(index: argparse._SubParsersAction) -> None:
    p = index.add_parser("verify", help="check a bundle's files, checksums, FAISS indexes, counts and encoders; "
                                        "exit 1 listing the problems")
    p.add_argument("index")
    p.add_argument("--no-encoders", action="store_true",
                   help="skip loading the encoders to compare fingerprints (faster; for machines without them)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_index_verify)


def cmd_index_verify(args: argparse.Namespace) -> int:
    from rag.index_bundle import verify_bundle

    problems = verify_bundle(args.index, encoders=not args.no_encoders)
    if args.json:
        print_json({"path": str(args.index), "ok": not problems, "problems": problems})
    elif problems:
        print("\n".join([f"{len(problems)} problem(s) in {args.index}:"] + [f"  {p}" for p in problems]),
              file=sys.stderr)
    else:
        checked = "pointer, manifest, checksums, FAISS indexes, counts" + ("" if args.no_encoders else ", encoders")
        print(f"OK {args.index}: {checked}")
    return 1 if problems else 0


# --- index add | remove ---------------------------------------------------------------------------

def _add_add(index: argparse._SubParsersAction) -> None:
    p = index.add_parser("add", help="add the documents of a corpus file without rebuilding")
    p.add_argument("index")
    p.add_argument("--corpus", required=True)
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_index_add)


def cmd_index_add(args: argparse.Namespace) -> int:
    from rag.index_build import add_documents

    result = add_documents(args.index, args.corpus, on_bad_record="skip" if args.skip_bad else "stop",
                           progress=not args.json)
    print_json(result) if args.json else print(f"added {result['added']} documents ({result['images']} images); "
                                               f"{result['documents_total']} in the index")
    return 0


def _add_remove(index: argparse._SubParsersAction) -> None:
    p = index.add_parser("remove", help="remove documents by id without rebuilding")
    p.add_argument("index")
    p.add_argument("ids", nargs="*")
    p.add_argument("--ids-file", help="file with one document id per line")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_index_remove)


def cmd_index_remove(args: argparse.Namespace) -> int:
    from rag.index_build import remove_documents

    ids = list(args.ids)
    if args.ids_file:
        ids += [line.strip() for line in Path(args.ids_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise ValueError("medrag index remove: name document ids, or --ids-file FILE")
    result = remove_documents(args.index, ids)
    print_json(result) if args.json else print(f"removed {result['removed']} documents; "
                                               f"{result['documents_total']} in the index")
    return 0
