"""Distributed corpus embedding on Ray: `medrag index build --engine ray`.

Ray Data streams the corpus (document texts, router sentences, image paths) in batches through a
fixed pool of encoder actors (`Dataset.map_batches` with `ActorPoolStrategy`): one actor per GPU,
each reserving that GPU, when the cluster has GPUs, otherwise one actor per CPU. Rows carry their
position, so the driver puts the vectors back in corpus order and the rest of the build (heads,
FAISS indexes, calibration, the atomic bundle write) is the local engine's, unchanged: a Ray build
and a local build of one corpus hold the same documents, ids and vectors (up to float rounding).

On a multi-node cluster every node needs medvlm-rag with the same encoder weights (each worker
checks its encoder's fingerprint against the driver's) and must be able to read the image paths
(shared storage). Ray is an optional extra: `pip install 'medvlm-rag[ray]'`.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import numpy as np

from rag.encoders import ImageEncoder, TextEncoder

INSTALL_HINT = "pip install 'medvlm-rag[ray]'"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the engine needs Ray Data, not only Ray core)
    except ImportError as exc:
        raise ImportError(f"the Ray build engine needs Ray Data, which is not installed ({exc}): "
                          f"run `{INSTALL_HINT}`, or build with `--engine local`") from exc
    return ray


class EncoderWorker:
    """A Ray actor holding one encoder, loaded once; encodes the batches Ray Data sends it."""

    def __init__(self, role: str, name: str, fingerprint: str, device: str, batch_size: int):
        from rag.encoders import create_image_encoder, create_text_encoder

        self.encoder = (create_text_encoder if role == "text" else create_image_encoder)(name, device)
        if self.encoder.fingerprint != fingerprint:
            raise RuntimeError(f"Ray worker on {socket.gethostname()} loaded the {role} encoder '{name}' with "
                               f"fingerprint {self.encoder.fingerprint}, the driver's has {fingerprint}: install "
                               f"the same model version on every node of the cluster")
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.encoder.encode([str(x) for x in batch["item"]], batch_size=self.batch_size)
        return {"row": batch["row"], "vector": vectors}


class RayEncoder:
    """A text or image encoder whose `encode` runs on the Ray cluster.

    It stands in for the local encoder during the build: same name, dimension and fingerprint.
    """

    def __init__(self, local: TextEncoder | ImageEncoder, role: str, workers: int, gpus_per_worker: float,
                 device: str):
        self.name, self.dim, self.fingerprint = local.name, local.dim, local.fingerprint
        self.shares_space_with_images = local.shares_space_with_images
        self.role, self.workers, self.gpus_per_worker, self.device = role, workers, gpus_per_worker, device

    def encode(self, items: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        import ray.data

        if not len(items):
            return np.zeros((0, self.dim), np.float32)
        if not all(isinstance(x, str) or hasattr(x, "__fspath__") for x in items):
            raise TypeError(f"the Ray engine encodes texts and image paths, not in-memory {self.role} objects")
        rows = ray.data.from_items([{"row": i, "item": str(x)} for i, x in enumerate(items)])
        encoded = rows.map_batches(
            EncoderWorker, fn_constructor_args=(self.role, self.name, self.fingerprint, self.device, batch_size),
            batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=None if self.gpus_per_worker else 1, num_gpus=self.gpus_per_worker or None)
        vectors = np.full((len(items), self.dim), np.nan, np.float32)
        for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
            vectors[batch["row"]] = batch["vector"]
        if np.isnan(vectors).any():
            raise RuntimeError(f"the Ray {self.role} encoding returned {int(np.isnan(vectors[:, 0]).sum())} of "
                               f"{len(items)} rows empty")
        return vectors


def ray_encoders(text_encoder: TextEncoder, image_encoder: ImageEncoder, address: str | None = None,
                 device: str | None = None, progress: bool = True) -> tuple[RayEncoder, RayEncoder]:
    """Ray-backed stand-ins for the two encoders, sized to the cluster.

    Connects to the cluster at `address` ("auto" for the one `ray start --head` runs here, or
    "ray://host:10001"), or starts a local instance when None; an already initialised Ray is used
    as it is. `device` "cpu" keeps the workers off GPUs.
    """
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=progress)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
    if gpus:
        workers, gpus_per_worker, worker_device = gpus, 1.0, "cuda"
    else:
        workers, gpus_per_worker, worker_device = max(1, int(resources.get("CPU", 1))), 0.0, "cpu"
    return (RayEncoder(text_encoder, "text", workers, gpus_per_worker, worker_device),
            RayEncoder(image_encoder, "image", workers, gpus_per_worker, worker_device))
