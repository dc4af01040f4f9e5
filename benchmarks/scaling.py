"""Scaling benchmark: exact and approximate vector indexes at 10k, 100k and 1M items.

Items are synthetic: a document each (id, title, text; indexed by the BM25 channel too, so bundle
sizes are realistic) with a 384-d text vector and a 256-d joint vector, both drawn from a clustered
distribution of low intrinsic dimension, as real embeddings are (uniform random vectors would make
every approximate index look worse than in practice): 1024 unit cluster centres, plus a spread in a
shared 24-d subspace (norm ~2.4, so neighbouring clusters overlap), plus isotropic noise (norm 0.1),
normalised to the unit sphere. Queries are fresh draws from the same distribution.

Every index goes through the bundle code the CLI uses: `ChannelIndex.build` creates and trains the
text and joint channels, `save_bundle` writes the bundle (FAISS files, doc store, BM25, manifest with
checksums), `load_bundle` reads it back, and `ChannelIndex.search` answers the queries, as it does for
`Retriever`. Per index type and size it reports build time (both channels), bundle size, index bytes
per item, resident memory growth, and on the text channel: warm single-query latency p50/p95 on
`--threads` threads and Recall@10 against exact search, over a sweep of nprobe (IVF) or efSearch
(HNSW). The operating point in the table is the cheapest setting with Recall@10 >= 0.95.

    .venv/bin/python benchmarks/scaling.py                     # 10k, 100k, 1M (about an hour on 2 cores)
    .venv/bin/python benchmarks/scaling.py --quick             # 10k only, fewer queries: a smoke run
    .venv/bin/python benchmarks/scaling.py --sizes 10000,100000 --types flat,hnsw
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# OpenMP threads that spin while waiting collapse when other processes share the cores (a single
# 2-thread flat search measured 28 ms instead of 0.5 ms under load): let them sleep instead.
# Must be set before FAISS loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rag.heads import Aligner, DomainRouter  # noqa: E402
from rag.corpus import Document  # noqa: E402
from rag.index_bundle import IndexBundle, load_bundle, save_bundle  # noqa: E402
from rag.lexical import LexicalIndex  # noqa: E402
from rag.manifest import Dims, EncoderInfo, Manifest, RoutingInfo  # noqa: E402
from rag.reporting import machine_facts, new_figure, now, save_figure  # noqa: E402
from rag.selection import SelectionConfig  # noqa: E402
from rag.vector_index import INDEX_TYPES, ChannelIndex, VectorIndexConfig  # noqa: E402

TEXT_DIM, JOINT_DIM, IMAGE_DIM = 384, 256, 1280
DOMAIN = "radiology"
K = 10
TARGET_RECALL = 0.95
SWEEPS = {"hnsw": ("ef_search", (16, 32, 64, 128, 256, 512)),
          "ivf-flat": ("nprobe", (1, 2, 4, 8, 16, 32, 64, 128, 256)),
          "ivf-pq": ("nprobe", (1, 2, 4, 8, 16, 32, 64, 128, 256))}


def clustered(n: int, dim: int, seed: int, clusters: int = 1024, latent: int = 24) -> np.ndarray:
    """Unit vectors from a Gaussian mixture whose within-cluster spread lies mostly in a `latent`-d subspace."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    basis = rng.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(dim)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in chunks: the temporaries of 1M x 384 would double the memory
        m = min(100_000, n - start)
        x = centers[rng.integers(0, clusters, m)]
        x += 0.5 * rng.standard_normal((m, latent)).astype(np.float32) @ basis
        x += (0.1 / np.sqrt(dim)) * rng.standard_normal((m, dim)).astype(np.float32)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def synthetic_documents(n: int) -> list[Document]:
    return [Document(id=f"syn-{i:07d}", domain=DOMAIN, title=f"Synthetic case {i}",
                     text=f"Finding {i % 97} in region {i % 13}; pattern {i % 1024}.") for i in range(n)]


def rss() -> int:
    return psutil.Process().memory_info().rss


def release_memory() -> None:
    gc.collect()
    try:  # hand freed heap pages back to the OS so the next RSS delta is not absorbed by them
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def percentile_ms(times: list[float], q: float) -> float:
    return round(float(np.percentile(times, q)) * 1000, 3)


def measure(index: ChannelIndex, queries: np.ndarray, truth: np.ndarray, params: dict[str, int]) -> dict:
    """Warm single-query latency and Recall@K of one setting."""
    for q in queries[:20]:
        index.search(q[None], K, params)
    times, found = [], []
    for q in queries:
        started = time.perf_counter()
        _, ids = index.search(q[None], K, params)
        times.append(time.perf_counter() - started)
        found.append(ids[0])
    recall = float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth)]))
    return {"p50_ms": percentile_ms(times, 50), "p95_ms": percentile_ms(times, 95), "recall_at_10": round(recall, 4)}


def run_type(kind: str, n: int, text: np.ndarray, joint: np.ndarray, queries: np.ndarray, truth: np.ndarray,
             docs: dict[int, Document], lexical: LexicalIndex, work: Path, exact_queries: int,
             overrides: dict[str, int]) -> dict:
    config = VectorIndexConfig(type=kind, **overrides)
    ids = np.arange(n, dtype=np.int64)
    release_memory()
    before = rss()
    started = time.perf_counter()
    vectors = {(DOMAIN, "text"): ChannelIndex.build(text, ids, TEXT_DIM, config, progress=True, desc="text"),
               (DOMAIN, "joint"): ChannelIndex.build(joint, ids, JOINT_DIM, config, progress=True, desc="joint")}
    build_s = time.perf_counter() - started
    build_rss = rss() - before
    built = {channel: {**index.describe()["shards"][0], "note": index.note} for (_, channel), index in vectors.items()}
    manifest = Manifest(domains=[DOMAIN], dims=Dims(text=TEXT_DIM, image=IMAGE_DIM, joint=JOINT_DIM),
                        encoders={"text": EncoderInfo("synthetic", TEXT_DIM, "-"),
                                  "image": EncoderInfo("synthetic", IMAGE_DIM, "-")},
                        spec={"seed": 0}, next_doc=n, next_image=0, routing=RoutingInfo(threshold=0.5))
    bundle = IndexBundle(manifest=manifest, docs=docs, image_owner={}, vectors=vectors, lexical=lexical,
                         router=DomainRouter(IMAGE_DIM, TEXT_DIM, 1), aligner=Aligner(IMAGE_DIM, TEXT_DIM, JOINT_DIM),
                         selection=SelectionConfig(), vector_config=config)
    target = work / f"{kind}-{n}"
    started = time.perf_counter()
    version = save_bundle(bundle, target)
    save_s = time.perf_counter() - started
    faiss_bytes = sum(p.stat().st_size for p in version.rglob("*.faiss"))
    bundle_bytes = sum(p.stat().st_size for p in version.rglob("*") if p.is_file())
    del vectors, bundle
    release_memory()

    # Query what the bundle reader gives back (checksums verified), as a Retriever would.
    before = rss()
    started = time.perf_counter()
    text_index = load_bundle(target).vectors[(DOMAIN, "text")]
    load_s = time.perf_counter() - started
    load_rss = rss() - before
    if kind == "flat":
        # exact search is the slow reference: fewer timed queries (its recall is 1 by definition)
        few = slice(0, min(len(queries), exact_queries))
        points = [{"param": None, **measure(text_index, queries[few], truth[few], config.search_params())}]
    else:
        name, values = SWEEPS[kind]
        points = []
        for value in values:
            point = measure(text_index, queries, truth, {**config.search_params(), name: value})
            points.append({"param": f"{name}={value}", **point})
            if point["recall_at_10"] >= 0.99:
                break
    reaching = [p for p in points if p["recall_at_10"] >= TARGET_RECALL]
    chosen = reaching[0] if reaching else max(points, key=lambda p: p["recall_at_10"])
    del text_index
    shutil.rmtree(target, ignore_errors=True)
    return {"type": kind, "n": n, "build_s": round(build_s, 2), "save_s": round(save_s, 2), "load_s": round(load_s, 2),
            "bundle_mb": round(bundle_bytes / 1e6, 1), "faiss_mb": round(faiss_bytes / 1e6, 1),
            "index_bytes_per_item": round(faiss_bytes / n, 1), "build_rss_mb": round(build_rss / 1e6, 1),
            "load_rss_mb": round(load_rss / 1e6, 1), "built": built, "operating_point": chosen,
            "reaches_target": bool(reaching), "sweep": points}


def run_size(n: int, types: list[str], n_queries: int, exact_queries: int, work: Path,
             overrides: dict[str, int]) -> Iterator[dict]:
    started = time.perf_counter()
    text_all = clustered(n + n_queries, TEXT_DIM, seed=1)
    joint = clustered(n, JOINT_DIM, seed=2)
    text, queries = text_all[:n], np.ascontiguousarray(text_all[n:])
    del text_all
    _, truth = faiss.knn(queries, text, K, metric=faiss.METRIC_INNER_PRODUCT)  # exact reference
    doc_list = synthetic_documents(n)
    lexical = LexicalIndex.build([f"{d.title}. {d.text}" for d in doc_list], [d.names for d in doc_list])
    docs = dict(enumerate(doc_list))
    print(f"[{n:,}] data, exact ground truth, documents and BM25 ready in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    for kind in tqdm(types, desc=f"{n:,} items", unit="index"):
        row = run_type(kind, n, text, joint, queries, truth, docs, lexical, work, exact_queries, overrides)
        op = row["operating_point"]
        print(f"[{n:,}] {kind:<8} build {row['build_s']:>7.1f} s  {row['faiss_mb']:>8.1f} MB FAISS  "
              f"{op['param'] or '':<14} p50 {op['p50_ms']:.2f} ms  p95 {op['p95_ms']:.2f} ms  "
              f"R@10 {op['recall_at_10']:.3f}", file=sys.stderr)
        yield row


def machine() -> dict:
    return {**machine_facts(), "faiss": faiss.__version__}


def _loads(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def write_report(results: dict, out: Path) -> None:
    rows = results["rows"]
    fig, (ax_lat, ax_rec) = new_figure(2, figsize=(11, 4))
    for kind in [t for t in INDEX_TYPES if any(r["type"] == t for r in rows)]:
        mine = sorted((r for r in rows if r["type"] == kind), key=lambda r: r["n"])
        ns = [r["n"] for r in mine]
        ax_lat.plot(ns, [r["operating_point"]["p50_ms"] for r in mine], marker="o", label=kind)
        ax_rec.plot(ns, [r["operating_point"]["recall_at_10"] for r in mine], marker="o", label=kind)
    ax_lat.set(xscale="log", yscale="log", xlabel="items", ylabel="p50 latency (ms), single query",
               title="Query latency at the operating point")
    ax_rec.set(xscale="log", xlabel="items", ylabel="Recall@10 vs exact", title="Recall at the operating point")
    ax_rec.axhline(TARGET_RECALL, color="grey", linestyle="--", linewidth=1)
    for ax in (ax_lat, ax_rec):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    save_figure(fig, out / "scaling.png")

    lines = ["# Scaling: vector index types from 10k to 1M items", "",
             f"Command: `{results['command']}`  ",
             f"Machine: {results['machine']['cpu']}, {results['machine']['logical_cpus']} logical CPUs, "
             f"{results['machine']['ram_gb']} GB RAM; FAISS {results['machine']['faiss']}; "
             f"{results['threads']} search threads  ",
             f"Date: {results['date']}; {results['queries']} queries per size ({results['exact_queries']} timed "
             f"for exact search); {results['seconds'] / 60:.1f} min; "
             f"load average (1/5/15 min) at start {_loads(results['load_average_at_start'])}, at the last row "
             f"{_loads(results['load_average_now'])} (other work shared the CPUs; OpenMP wait policy "
             f"{results['omp_wait_policy']})",
             *[f"Rows kept from an earlier run: `{e['command']}` on {e['date']}, load average at start "
               f"{_loads(e['load_average_at_start'])}  " for e in results.get("earlier_runs", [])],
             "", "Data: synthetic, clustered and of low intrinsic dimension (1024 unit cluster centres plus a "
             "spread of norm ~2.4 in a shared 24-d subspace, so clusters overlap, plus isotropic noise; "
             "normalised to the unit sphere), a 384-d text and a 256-d joint vector per item; latency and recall are "
             "measured on the text channel, build time and sizes cover both channels plus the doc store "
             "and BM25. The operating point is the cheapest nprobe / efSearch with Recall@10 >= 0.95 "
             "(or the best reached); full sweeps are in `scaling.json`. Default parameters: "
             "HNSW M=32, efConstruction=40; IVF nlist = 4*sqrt(N); IVF-PQ 96 (text) / 64 (joint) bytes per code.",
             "", "| N | index | build (s) | bundle (MB) | FAISS bytes/item | load RSS (MB) | setting | p50 (ms) "
             "| p95 (ms) | Recall@10 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["n"], INDEX_TYPES.index(r["type"]))):
        op = r["operating_point"]
        lines.append(f"| {r['n']:,} | {r['type']} | {r['build_s']} | {r['bundle_mb']} | {r['index_bytes_per_item']} "
                     f"| {r['load_rss_mb']} | {op['param'] or 'exact'} | {op['p50_ms']} | {op['p95_ms']} "
                     f"| {op['recall_at_10']} |")
    lines += ["", "![latency and recall against N](scaling.png)", ""]
    if results.get("notes"):
        lines += ["## Notes", "", *(f"- {note}" for note in results["notes"]), ""]
    (out / "scaling.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "scaling.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated item counts")
    parser.add_argument("--types", default=",".join(INDEX_TYPES), help=f"comma-separated, of {list(INDEX_TYPES)}")
    parser.add_argument("--queries", type=int, default=200, help="queries per size")
    parser.add_argument("--exact-queries", type=int, default=50, help="timed queries for exact (flat) search")
    parser.add_argument("--nlist", type=int, help="IVF lists (default: the bundle default, ~4*sqrt(N))")
    parser.add_argument("--hnsw-m", type=int, help="HNSW links per node (default: the bundle default, 32)")
    parser.add_argument("--threads", type=int, default=2, help="FAISS threads while searching and building")
    parser.add_argument("--quick", action="store_true", help="10k items and 100 queries: a smoke run")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="report folder")
    parser.add_argument("--work", help="scratch folder for the bundles (default: a temporary folder)")
    parser.add_argument("--keep-other-sizes", action="store_true",
                        help="keep the existing scaling.json's rows for the (size, index type) pairs not run now, "
                             "and its notes, so a long size can be measured in a later run and reported beside "
                             "the others")
    args = parser.parse_args(argv)
    try:
        sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    types = args.types.split(",")
    bad = [t for t in types if t not in INDEX_TYPES]
    if bad or any(n < 1000 for n in sizes):
        parser.error(f"--types must be of {list(INDEX_TYPES)} (got {bad}); --sizes must be >= 1000")
    n_queries = 100 if args.quick else args.queries
    overrides = {k: v for k, v in (("nlist", args.nlist), ("hnsw_m", args.hnsw_m)) if v is not None}
    faiss.omp_set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {"command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "date": now(), "machine": machine(),
               "threads": args.threads, "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "queries": n_queries,
               "exact_queries": min(n_queries, args.exact_queries),
               "sizes": sizes, "types": types, "index_overrides": overrides, "k": K, "target_recall": TARGET_RECALL,
               "load_average_at_start": os.getloadavg(), "rows": []}
    kept: list[dict] = []
    if args.keep_other_sizes and (out / "scaling.json").exists():
        earlier = json.loads((out / "scaling.json").read_text())
        kept = [row for row in earlier["rows"] if row["n"] not in sizes or row["type"] not in types]
        results["notes"] = earlier.get("notes", [])
        results["earlier_runs"] = earlier.get("earlier_runs", []) + [
            {k: earlier[k] for k in ("command", "date", "load_average_at_start", "seconds") if k in earlier}]
    work = Path(tempfile.mkdtemp(prefix="medrag-scaling-", dir=args.work))
    results["rows"] = kept
    try:
        for n in sizes:
            for row in run_size(n, types, n_queries, args.exact_queries, work, overrides):
                # written after every row, so a long run that is stopped still leaves its results
                results["rows"].append(row)
                results["rows"].sort(key=lambda r: r["n"])
                results["seconds"] = round(time.perf_counter() - started, 1)
                results["load_average_now"] = os.getloadavg()
                write_report(results, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out / 'scaling.md'}, {out / 'scaling.json'} and {out / 'scaling.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
