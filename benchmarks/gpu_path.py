"""The GPU path (issue 7): encoders batching on CUDA, the sample index built on CUDA, FAISS on the GPU.

Run it on a machine with a GPU:

    python benchmarks/gpu_path.py

It measures, on CPU and on CUDA:

* the default text and image encoders: items per second, and the lowest cosine between the CPU and
  the CUDA vector of the same item (the two devices must embed alike);
* `build_index` over a freshly generated sample corpus: build time, and the largest difference
  between the CPU-built and the CUDA-built bundle's vectors (same ids, same documents);
* with faiss-gpu and a visible GPU: an IVF-Flat channel trained and searched on the GPU against the
  CPU (Recall@10 of the GPU search against exact search, and query time). Without faiss-gpu it
  says so and skips that part.

Writes benchmarks/results/gpu_path.{json,md} (or --out). Needs CUDA; it refuses to run without it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from rag.encoders import create_image_encoder, create_text_encoder  # noqa: E402
from rag.reporting import machine_description  # noqa: E402
from rag.index_build import build_index  # noqa: E402
from sample_corpus.build import build_sample_corpus  # noqa: E402
from rag.vector_index import ChannelIndex, VectorIndexConfig  # noqa: E402

DEVICES = ("cpu", "cuda")


def encoder_figures(n_texts: int, n_images: int) -> dict:
    texts = [f"Case {i}: opacity in the lower lobe, finding {i % 97}, herb {i % 13}, tongue coating {i % 7}"
             for i in range(n_texts)]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)) for _ in range(n_images)]
    figures: dict = {}
    for kind, make, items in (("text", create_text_encoder, texts), ("image", create_image_encoder, images)):
        vectors = {}
        for device in DEVICES:
            encoder = make(device=device)
            encoder.encode(items[:64])  # warm-up: kernels, allocator
            started = time.perf_counter()
            vectors[device] = encoder.encode(items)
            figures[f"{kind}_{device}_items_per_s"] = round(len(items) / (time.perf_counter() - started), 1)
        figures[f"{kind}_min_cosine_cpu_vs_cuda"] = round(float((vectors["cpu"] * vectors["cuda"]).sum(1).min()), 7)
    return figures


def _flat_contents(bundle, key) -> tuple[np.ndarray, np.ndarray]:
    ids, vectors = [], []
    for shard in bundle.vectors[key].shards:
        ids.append(faiss.vector_to_array(shard.id_map))
        vectors.append(shard.index.reconstruct_n(0, shard.ntotal))
    ids, vectors = np.concatenate(ids), np.concatenate(vectors)
    order = np.argsort(ids)
    return ids[order], vectors[order]


def build_figures(work: Path) -> dict:
    build_sample_corpus(work / "corpus", seed=0, images_per_doc=2, query_images_per_doc=1, progress=False)
    bundles, figures = {}, {}
    for device in DEVICES:
        started = time.perf_counter()
        bundles[device] = build_index(work / "corpus" / "corpus.jsonl", work / device, progress=False, device=device)
        figures[f"build_{device}_s"] = round(time.perf_counter() - started, 1)
    cpu, cuda = bundles["cpu"], bundles["cuda"]
    if set(cpu.vectors) != set(cuda.vectors) or cpu.docs.keys() != cuda.docs.keys():
        raise AssertionError("the CPU and CUDA builds hold different channels or documents")
    largest = 0.0
    for key in cpu.vectors:
        cpu_ids, cpu_vectors = _flat_contents(cpu, key)
        cuda_ids, cuda_vectors = _flat_contents(cuda, key)
        if not np.array_equal(cpu_ids, cuda_ids):
            raise AssertionError(f"channel {key}: the CPU and CUDA builds hold different ids")
        largest = max(largest, float(np.abs(cpu_vectors - cuda_vectors).max(initial=0.0)))
    figures.update(documents=len(cpu.docs), channels=len(cpu.vectors), max_abs_vector_diff=largest)
    return figures


def faiss_figures(n: int, queries: int) -> dict:
    if faiss.get_num_gpus() == 0:
        return {"faiss_gpu": "not available: faiss has no GPU support here (install faiss-gpu-cu12 on a CUDA 12 "
                             "runtime); the IVF/flat GPU path was not measured"}
    rng = np.random.default_rng(0)
    base = rng.standard_normal((n, 384), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    probe = base[rng.choice(n, queries, replace=False)] + 0.05 * rng.standard_normal((queries, 384), dtype=np.float32)
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    exact = ChannelIndex.build(base, ids, 384, VectorIndexConfig(type="flat"))
    _, truth = exact.search(probe, 10, {})
    started = time.perf_counter()
    ivf = ChannelIndex.build(base, ids, 384, VectorIndexConfig(type="ivf-flat"))
    figures = {"faiss_gpu": f"{faiss.get_num_gpus()} GPU(s)", "ivf_train_and_add_s": round(time.perf_counter() - started, 1)}
    for where in ("cpu", "gpu"):
        if where == "gpu" and not ivf.to_gpu():
            raise AssertionError("faiss reports a GPU but the IVF channel did not move to it")
        ivf.search(probe[:8], 10, {})
        started = time.perf_counter()
        _, found = ivf.search(probe, 10, {})
        figures[f"ivf_{where}_ms_per_query"] = round(1000 * (time.perf_counter() - started) / queries, 3)
        figures[f"ivf_{where}_recall_at_10"] = round(float(np.mean([len(set(f) & set(t)) / 10
                                                                      for f, t in zip(found, truth)])), 4)
    return figures


def markdown(results: dict) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in results["figures"].items())
    return (f"# GPU path\n\n{results['date']} on {results['machine']}\n\n"
            f"Command: `{results['command']}`\n\n| figure | value |\n|---|---|\n{rows}\n\n{results['notes']}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=4096, help="texts embedded per device")
    parser.add_argument("--images", type=int, default=512, help="images embedded per device")
    parser.add_argument("--vectors", type=int, default=200_000, help="IVF vectors (faiss-gpu only)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="report folder")
    parser.add_argument("--notes", default="", help="text added under the table (e.g. how the run was set up)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark compares CPU and CUDA, run it on a machine with a GPU")
    figures = {"torch": torch.__version__, "faiss": faiss.__version__, **encoder_figures(args.texts, args.images)}
    with tempfile.TemporaryDirectory() as work:
        figures.update(build_figures(Path(work)))
    figures.update(faiss_figures(args.vectors, 1000))
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine_description(), "command": "python " + " ".join(sys.argv),
               "figures": figures, "notes": args.notes}
    print(json.dumps(results, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_path.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "gpu_path.md").write_text(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
