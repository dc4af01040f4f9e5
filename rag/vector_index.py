"""The dense vectors of one domain-channel: exact or approximate FAISS indexes, optionally sharded.

Every index type keeps inner product on L2-normalised vectors (cosine) and our own stable int64 ids:

    flat      IndexIDMap2(IndexFlatIP)          exact; best below ~100k vectors per channel
    hnsw      IndexIDMap2(IndexHNSWFlat, IP)    graph search: lowest latency, full vectors + graph in memory
    ivf-flat  IndexIVFFlat(IP), ids in lists    k-means lists (trained on a sample), full vectors
    ivf-pq    IndexIVFPQ(IP), ids in lists      k-means lists + product-quantised codes: least memory

IVF indexes are trained on a sample of the vectors they are built with; a channel too small to train
the requested number of lists gets fewer lists, or an exact flat index, and the decision is recorded
(`ChannelIndex.note`, kept in the bundle manifest). Removal: flat and IVF indexes delete by id;
FAISS's HNSW cannot delete, so removing from an HNSW shard rebuilds that shard's graph from the
vectors it stores (no re-embedding; cost ~ building that shard, hence shards for big channels).

A channel may be split into shards (a vector's shard is `id % shards`, so adds and removes need no
lookup); a query searches every shard and merges their top k by score, which for exact shards is the
exact top k of the whole channel.

With faiss-gpu and a GPU, IVF k-means runs on the GPU and `ChannelIndex.to_gpu` keeps GPU copies for
unfiltered searches (FAISS has no GPU HNSW; filtered searches stay on the CPU copy, which is also
the one written to disk).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

INDEX_TYPES = ("flat", "hnsw", "ivf-flat", "ivf-pq")
SEARCH_PARAMS = ("nprobe", "ef_search")
# FAISS's k-means warns below 39 training points per centroid: the centroids are then poorly placed.
MIN_POINTS_PER_CENTROID = 39
# Below this many lists an inverted file prunes too little to beat an exact scan.
MIN_LISTS = 4
ADD_CHUNK = 50_000


@dataclass
class VectorIndexConfig:
    """How every domain-channel's vectors are indexed: the `vector_index:` block of an index spec."""

    type: str = "flat"                  # one of INDEX_TYPES
    shards: int = 1                     # FAISS files per domain-channel, searched as one
    nlist: int | None = None            # IVF lists per shard; default about 4·sqrt(vectors in the shard)
    nprobe: int = 16                    # IVF lists visited per query (query time; overridable)
    hnsw_m: int = 32                    # HNSW links per node: recall and memory grow with it
    ef_construction: int = 40           # HNSW candidate list while building
    ef_search: int = 64                 # HNSW candidate list per query (query time; overridable)
    pq_m: int | None = None             # IVF-PQ sub-quantizers (bytes per vector at 8 bits); default dim/4
    pq_bits: int = 8                    # bits per sub-quantizer code
    train_size: int | None = None       # vectors sampled to train IVF; default 50 per list (PQ: 39 per code)

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise ValueError(f"vector_index.type must be one of {list(INDEX_TYPES)}, got {self.type!r}")
        for name in ("shards", "nprobe", "hnsw_m", "ef_construction", "ef_search", "nlist", "pq_m", "train_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"vector_index.{name} must be a positive integer, got {value!r}")
        if not 1 <= self.pq_bits <= 16:
            raise ValueError(f"vector_index.pq_bits must be between 1 and 16, got {self.pq_bits!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None, where: str = "vector_index") -> "VectorIndexConfig":
        """From a spec or manifest mapping; unknown keys are an error naming `where`."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"channels"})
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def search_params(self) -> dict[str, int]:
        return {"nprobe": self.nprobe, "ef_search": self.ef_search}


def check_search_params(params: dict[str, Any]) -> dict[str, int]:
    """Query-time overrides (nprobe, ef_search), validated."""
    unknown = sorted(set(params) - set(SEARCH_PARAMS))
    if unknown:
        raise ValueError(f"unknown search parameter(s) {unknown}; known: {list(SEARCH_PARAMS)}")
    for name, value in params.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"search parameter {name} must be a positive integer, got {value!r}")
    return dict(params)


def index_kind(index: faiss.Index) -> str:
    """Which of INDEX_TYPES a (CPU) FAISS index is."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVFPQ):
        return "ivf-pq"
    if isinstance(inner, faiss.IndexIVFFlat):
        return "ivf-flat"
    if isinstance(inner, faiss.IndexFlat):
        return "flat"
    raise ValueError(f"unsupported FAISS index {type(inner).__name__}; rebuild the bundle with `medrag index build`")


def _pq_m(dim: int, requested: int | None) -> int:
    if requested is not None:
        if dim % requested:
            raise ValueError(f"vector_index.pq_m={requested} must divide the vector dimension {dim}")
        return requested
    # Four dimensions per sub-quantizer: an eighth of float32's memory at 8 bits (recall: benchmarks/scaling.py).
    return max(m for m in range(1, max(1, dim // 4) + 1) if dim % m == 0)


def _plan(n: int, dim: int, config: VectorIndexConfig) -> tuple[str, dict[str, int], str | None]:
    """The index type and sizes one shard of `n` vectors gets, and why, if not what was asked."""
    kind = config.type
    if kind in ("flat", "hnsw"):
        return kind, {}, None
    wanted = config.nlist or max(1, round(4 * math.sqrt(n)))
    nlist = min(wanted, n // MIN_POINTS_PER_CENTROID)
    if kind == "ivf-pq" and n < MIN_POINTS_PER_CENTROID * (1 << config.pq_bits):
        # PQ codebooks need as many training points as IVF lists do; tiny channels gain nothing from it.
        kind, note = "ivf-flat", (f"{n} vectors are too few to train {1 << config.pq_bits}-centroid PQ codebooks "
                                  f"(need {MIN_POINTS_PER_CENTROID * (1 << config.pq_bits)}): built ivf-flat")
    else:
        note = None
    if nlist < MIN_LISTS:
        return "flat", {}, (f"{n} vectors are too few to train {config.type} (need {MIN_POINTS_PER_CENTROID * MIN_LISTS} "
                            f"for {MIN_LISTS} lists): built an exact flat index")
    if nlist < wanted:
        note = (note + "; " if note else "") + (f"nlist {wanted} needs {wanted * MIN_POINTS_PER_CENTROID} vectors, "
                                                f"{n} available: nlist {nlist}")
    sizes = {"nlist": nlist}
    if kind == "ivf-pq":
        sizes.update(pq_m=_pq_m(dim, config.pq_m), pq_bits=config.pq_bits)
    return kind, sizes, note


def _new_shard(vectors: np.ndarray, dim: int, config: VectorIndexConfig, seed: int) -> tuple[faiss.Index, str | None]:
    """An empty index for one shard, trained on (a sample of) `vectors` when its type needs training."""
    kind, sizes, note = _plan(len(vectors), dim, config)
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), note
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = config.ef_construction
        return faiss.IndexIDMap2(hnsw), note
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf-flat":
        index = faiss.IndexIVFFlat(quantizer, dim, sizes["nlist"], faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, sizes["nlist"], sizes["pq_m"], sizes["pq_bits"],
                                 faiss.METRIC_INNER_PRODUCT)
    # 50 points per list (FAISS warns below 39); PQ codebooks need as many per code as well
    default_size = max(50 * sizes["nlist"], MIN_POINTS_PER_CENTROID * (1 << sizes.get("pq_bits", 0)))
    size = min(len(vectors), config.train_size or default_size)
    sample = vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), size, replace=False))]
    index.cp.seed = seed
    gpu_clustering = None
    if faiss.get_num_gpus() > 0:
        # k-means is the expensive part of training: run its assignments on the GPU(s).
        gpu_clustering = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim))
        index.clustering_index = gpu_clustering
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    if gpu_clustering is not None:
        index.clustering_index = None
    return index, note


def _shard_of(ids: np.ndarray, shards: int) -> np.ndarray:
    return ids % shards


def _add_in_chunks(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, progress: bool, desc: str) -> None:
    # Adding a million vectors to a graph or inverted file takes minutes: show it, chunk by chunk.
    for start in tqdm(range(0, len(ids), ADD_CHUNK), desc=desc, unit="chunk", disable=not progress):
        index.add_with_ids(vectors[start:start + ADD_CHUNK], ids[start:start + ADD_CHUNK])


class ChannelIndex:
    """One domain-channel's vectors: one FAISS index per shard, searched as one."""

    def __init__(self, shards: list[faiss.Index], note: str | None = None):
        if not shards:
            raise ValueError("a channel index needs at least one shard")
        self.shards = shards
        self.note = note
        self._gpu: list[faiss.Index] | None = None

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, dim: int, config: VectorIndexConfig,
              seed: int = 0, progress: bool = False, desc: str = "vectors") -> "ChannelIndex":
        """Create, train (IVF) and fill the shards of a channel from its first vectors."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
        ids = np.asarray(ids, dtype=np.int64)
        shards, notes = [], []
        for s in range(config.shards):
            if config.shards == 1:
                part, part_ids = vectors, ids  # no copy of what may be a million-row matrix
            else:
                rows = np.flatnonzero(_shard_of(ids, config.shards) == s)
                part, part_ids = vectors[rows], ids[rows]
            index, note = _new_shard(part, dim, config, seed + s)
            _add_in_chunks(index, part, part_ids, progress and len(part_ids) >= ADD_CHUNK,
                           f"{desc} ({config.type}{f', shard {s}' if config.shards > 1 else ''})")
            shards.append(index)
            if note:
                notes.append(f"shard {s}: {note}" if config.shards > 1 else note)
        return cls(shards, "; ".join(notes) or None)

    @property
    def ntotal(self) -> int:
        return sum(int(s.ntotal) for s in self.shards)

    @property
    def d(self) -> int:
        return int(self.shards[0].d)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors under new ids (IVF indexes keep the lists they were trained with)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        for s, shard in enumerate(self.shards):
            rows = np.flatnonzero(_shard_of(ids, len(self.shards)) == s)
            if len(rows):
                shard.add_with_ids(vectors[rows], ids[rows])
        self._gpu = None

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        for s, shard in enumerate(self.shards):
            doomed = ids[_shard_of(ids, len(self.shards)) == s]
            if not len(doomed):
                continue
            if index_kind(shard) == "hnsw":
                self.shards[s] = _hnsw_without(shard, doomed)
            else:
                shard.remove_ids(doomed)
        self._gpu = None

    def search(self, queries: np.ndarray, k: int, params: dict[str, int],
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top `k` (scores, ids) per query over all shards; ids -1 pad when fewer exist or are allowed."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        shards = self._gpu if (self._gpu is not None and allowed is None) else self.shards
        sel = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64)) if allowed is not None else None
        scores, ids = [], []
        for shard in shards:
            if shard.ntotal == 0:
                continue
            s, i = shard.search(queries, min(k, int(shard.ntotal)), params=_search_parameters(shard, params, sel))
            scores.append(s)
            ids.append(i)
        if not scores:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if len(scores) == 1:
            return scores[0], ids[0]
        scores, ids = np.concatenate(scores, axis=1), np.concatenate(ids, axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def to_gpu(self) -> bool:
        """Keep GPU copies of the shards FAISS can search on a GPU; True if any moved."""
        if faiss.get_num_gpus() == 0:
            return False
        self._gpu = [_gpu_copy(s) for s in self.shards]
        return any(g is not s for g, s in zip(self._gpu, self.shards))

    def describe(self) -> dict[str, Any]:
        """What was built, for the manifest: type and sizes of each shard, and the fallback note."""
        shards = []
        for shard in self.shards:
            kind = index_kind(shard)
            info: dict[str, Any] = {"type": kind, "ntotal": int(shard.ntotal)}
            inner = faiss.downcast_index(shard.index if isinstance(shard, faiss.IndexIDMap) else shard)
            if kind == "hnsw":
                info.update(m=int(inner.hnsw.nb_neighbors(1)), ef_construction=int(inner.hnsw.efConstruction))
            elif kind.startswith("ivf"):
                info["nlist"] = int(inner.nlist)
                if kind == "ivf-pq":
                    info.update(pq_m=int(inner.pq.M), pq_bits=int(inner.pq.nbits))
            shards.append(info)
        return {"type": sorted({s["type"] for s in shards}), "ntotal": self.ntotal, "shards": shards,
                "note": self.note}


def _search_parameters(index: faiss.Index, params: dict[str, int],
                       sel: faiss.IDSelector | None) -> faiss.SearchParameters | None:
    """FAISS search parameters of the type `index` expects (an IVF index rejects the generic kind)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)
    extra = {} if sel is None else {"sel": sel}
    if hasattr(inner, "hnsw"):
        return faiss.SearchParametersHNSW(efSearch=params["ef_search"], **extra)
    if hasattr(inner, "nprobe"):  # CPU and GPU inverted files
        return faiss.SearchParametersIVF(nprobe=params["nprobe"], **extra)
    return faiss.SearchParameters(**extra) if extra else None


def _gpu_copy(shard: faiss.Index) -> faiss.Index:
    """A GPU copy of a shard, or the shard itself where FAISS cannot search it on a GPU."""
    if index_kind(shard) == "hnsw":
        return shard  # FAISS has no GPU HNSW
    try:
        return faiss.index_cpu_to_all_gpus(shard)
    except RuntimeError as exc:
        # e.g. an IVF-PQ code size the GPU's shared memory cannot hold: search it on the CPU instead
        warnings.warn(f"searching a {index_kind(shard)} shard on the CPU: FAISS could not copy it to the GPU ({exc})",
                      stacklevel=2)
        return shard


def _hnsw_without(shard: faiss.IndexIDMap2, doomed: np.ndarray) -> faiss.IndexIDMap2:
    """FAISS's HNSW cannot delete: rebuild the shard's graph from the vectors it stores, minus `doomed`."""
    inner = faiss.downcast_index(shard.index)
    ids = faiss.vector_to_array(shard.id_map)
    keep = ~np.isin(ids, doomed)
    vectors = inner.reconstruct_n(0, shard.ntotal)[keep]
    hnsw = faiss.IndexHNSWFlat(shard.d, int(inner.hnsw.nb_neighbors(1)), faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = inner.hnsw.efConstruction
    rebuilt = faiss.IndexIDMap2(hnsw)
    if keep.any():
        rebuilt.add_with_ids(np.ascontiguousarray(vectors), ids[keep])
    return rebuilt
