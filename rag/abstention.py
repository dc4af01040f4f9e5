"""Abstention thresholds calibrated when a bundle is built, from the corpus alone (docs/design.md §5 step 5).

`MedRAG` abstains when no kept evidence is close to the query in any channel: question->text cosine,
image->image cosine, BM25 score. How close is close depends on the encoders and the corpus (a
caption corpus, a monograph corpus and a synthetic one have different score scales), so each
threshold is set at build time from two score distributions of the channel's best hit:

- in-corpus queries: a sentence of a document (text, BM25), a document's image with itself left out
  (image: its best other image of the same document), which the index should answer;
- off-topic probes made from the corpus: "word salad" (words drawn from all documents at random, so
  no document is about them) and images whose patches were shuffled (the corpus's colours and
  textures, none of its content).

The threshold is the probes' PROBE_QUANTILE (just above what noise reaches), but never above the
in-corpus queries' ANSWERABLE_QUANTILE, so that answerable queries are not refused for the sake of
noise. Bundles built before this keep the constants in `rag.pipeline`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from rag.corpus import Document
from rag.encoders import load_rgb
from rag.text import sentences

PROBE_QUANTILE = 0.99
ANSWERABLE_QUANTILE = 0.05
PROBES = 60           # per kind: enough for the 5% / 99% quantiles, a few seconds of search and encoding
SALAD_WORDS = 8
PATCH_GRID = 8        # a shuffled image is cut into PATCH_GRID x PATCH_GRID tiles


def _threshold(answerable: Sequence[float], probes: Sequence[float]) -> float | None:
    if not probes:
        return None
    noise = float(np.quantile(probes, PROBE_QUANTILE))
    return round(min(noise, float(np.quantile(answerable, ANSWERABLE_QUANTILE))) if answerable else noise, 4)


def _text_queries(docs: Sequence[Document], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """In-corpus sentences and word-salad probes, PROBES of each at most."""
    pool = [s for d in docs for s in sentences(d.text) if len(s.split()) >= 5]
    words = [w for d in docs for w in d.text.split() if w.isalpha() and len(w) > 3]
    answerable = [pool[i] for i in rng.choice(len(pool), size=min(PROBES, len(pool)), replace=False)] if pool else []
    salads = [" ".join(rng.choice(words, size=SALAD_WORDS)) for _ in range(PROBES)] if len(words) >= SALAD_WORDS else []
    return answerable, salads


def shuffled_patches(path: str, rng: np.random.Generator) -> Image.Image:
    """The image with its tiles shuffled: same colours and textures, no object."""
    pixels = np.asarray(load_rgb(path).resize((224, 224)))
    size = 224 // PATCH_GRID
    tiles = [pixels[r:r + size, c:c + size] for r in range(0, 224, size) for c in range(0, 224, size)]
    order = rng.permutation(len(tiles))
    rows = [np.concatenate([tiles[order[r * PATCH_GRID + c]] for c in range(PATCH_GRID)], axis=1)
            for r in range(PATCH_GRID)]
    return Image.fromarray(np.concatenate(rows, axis=0))


def calibrate_abstention(retriever, images: np.ndarray, image_doc: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Thresholds {"text", "bm25", "image"} (None: the channel has nothing to calibrate on) and what they
    came from. `retriever` is a `rag.retriever.Retriever` over the new bundle; `images` / `image_doc` the
    corpus image features as the image channel holds them (whitened) and their documents' positions
    in `docs` order."""
    rng = np.random.default_rng(seed)
    docs = list(retriever.bundle.docs.values())
    answerable, salads = _text_queries(docs, rng)
    best: dict[str, dict[str, list[float]]] = {c: {"answerable": [], "probes": []} for c in ("text", "bm25")}
    for group, queries in (("answerable", answerable), ("probes", salads)):
        for query in queries:
            _, _, per_channel = retriever.search_channels(query, None, ["text", "bm25"], depth=1)
            for channel in ("text", "bm25"):
                best[channel][group].append(per_channel[channel][0][1] if per_channel[channel] else 0.0)
    best["image"] = {"answerable": [], "probes": []}
    if len(images):
        counts = np.bincount(image_doc)
        several = np.flatnonzero(counts[image_doc] >= 2)
        chosen = rng.choice(several, size=min(PROBES, len(several)), replace=False) if len(several) else []
        for i in chosen:
            same = np.flatnonzero((image_doc == image_doc[i]) & (np.arange(len(images)) != i))
            best["image"]["answerable"].append(float((images[same] @ images[i]).max()))
        paths = [p for d in docs for p in d.images]
        picks = rng.choice(len(paths), size=min(PROBES, len(paths)), replace=False)
        probes = retriever.bundle.whitening.apply(
            retriever.image_encoder.encode([shuffled_patches(paths[i], rng) for i in picks]))
        best["image"]["probes"] = [float(v) for v in (probes @ images.T).max(axis=1)]
    out: dict[str, Any] = {c: _threshold(v["answerable"], v["probes"]) for c, v in best.items()}
    out["evidence"] = {c: {g: {"n": len(s), "p05": round(float(np.quantile(s, 0.05)), 4),
                               "p50": round(float(np.quantile(s, 0.5)), 4), "p99": round(float(np.quantile(s, 0.99)), 4)}
                           for g, s in v.items() if s} for c, v in best.items()}
    return out
