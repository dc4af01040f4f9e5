"""The loaded pipeline behind the HTTP API: one model, one worker, one queue.

Every request that touches the models (retrieval encodes the query, answering runs the VLM) is a
job on a single worker thread, taken in arrival order. On a CPU server the model already uses every
core for one request, so running two at once would only make both slower; and a job that runs alone
computes exactly what a serial call computes, so concurrent clients get the answers a serial client
would (the load test checks it). At most `max_queue` jobs wait; beyond that a request gets 503 at
once rather than a reply minutes later.

The model loads on that worker after the server starts, so `/api/health` answers "loading" at once
and the port is open while weights load. Before each job the worker reads the bundle's CURRENT
pointer (one small file): when `medrag index add` or `remove` has swapped in a new version, the
bundle is reloaded with the encoders already in memory, and the job runs on the new version.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from PIL import Image

from rag.serve.errors import ApiError

if TYPE_CHECKING:  # annotations only: the pipeline loads torch, which the service imports when it loads
    from rag.corpus import Document
    from rag.generator import Generator
    from rag.pipeline import MedRAG

log = logging.getLogger("medrag.serve")
T = TypeVar("T")
MAX_QUEUE = 64


class Service:
    """One `MedRAG` over the bundle at `index_dir`, answering through a single FIFO worker."""

    def __init__(self, index_dir: str | Path, generator: Generator | str, device: str | None = None,
                 max_queue: int = MAX_QUEUE):
        self.index_dir = Path(index_dir)
        self.generator = generator
        self.device = device
        self.max_queue = max_queue
        self.state = "loading"              # -> "ready" or "failed"
        self.error: str | None = None       # why loading failed, or why the last reload did
        self._rag: MedRAG | None = None
        self._docs: dict[str, Document] = {}  # document id -> document of the loaded version
        self._jobs: queue.SimpleQueue[tuple[Future, Callable[[], Any]] | None] = queue.SimpleQueue()
        # A daemon thread, unlike a ThreadPoolExecutor's: Ctrl-C stops the server even mid-load or mid-answer.
        self._worker = threading.Thread(target=self._work, name="medrag-model", daemon=True)
        self._waiting = 0
        self._waiting_lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the index, encoders and generator on the worker; returns at once."""
        self._worker.start()
        self._submit(self._load)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the load started by `start` has finished (it is the worker's first job)."""
        self._submit(lambda: None).result(timeout)
        if self.state != "ready":
            raise RuntimeError(f"the service failed to load: {self.error}")

    def close(self) -> None:
        """Stop the worker after the job it is running; queued jobs are cancelled."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job:
                job[0].cancel()
        self._jobs.put(None)

    def _submit(self, job: Callable[[], T]) -> Future:
        future: Future = Future()
        self._jobs.put((future, job))
        return future

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            future, job = item
            if not future.set_running_or_notify_cancel():  # cancelled while queued: its client left
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the request that waits for it
                future.set_exception(exc)

    def _load(self) -> None:
        from rag.encoders import ModelNotAvailableError
        from rag.index_bundle import BundleError
        from rag.pipeline import MedRAG

        try:
            self._install(MedRAG.load(self.index_dir, generator=self.generator, device=self.device))
            self.state = "ready"
            log.info("ready: index %s (%s), generator %s", self.index_dir, self.version, self._rag.generator.name)
        except Exception as exc:  # reported by /api/health; the server keeps running to say so
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            # A missing index or model is said in one line; anything else is a bug and keeps its traceback.
            expected = isinstance(exc, (BundleError, ModelNotAvailableError, OSError, ValueError))
            log.error("loading failed: %s", self.error, exc_info=not expected)

    def _install(self, rag: MedRAG) -> None:
        self._docs = {doc.id: doc for doc in rag.retriever.bundle.docs.values()}  # one reference swap
        self._rag = rag

    @property
    def version(self) -> str | None:
        """The bundle version folder being served."""
        root = self._rag.retriever.bundle.root if self._rag else None
        return root.name if root else None

    def health(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": self.state, "index": str(self.index_dir), "version": self.version,
                                "queued": self._waiting}
        if self._rag:
            data["generator"] = self._rag.generator.name
            data["documents"] = len(self._docs)
        if self.error:
            data["error"] = self.error
        return data

    # --- the queue ----------------------------------------------------------------------------------

    async def run(self, job: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `job(*args, **kwargs)` on the model worker after the jobs queued before it."""
        if self.state != "ready":
            raise ApiError(503, "the model is still loading; retry shortly" if self.state == "loading"
                           else f"the model failed to load: {self.error}")
        with self._waiting_lock:
            if self._waiting >= self.max_queue:
                raise ApiError(503, f"{self._waiting} requests are already queued; retry shortly")
            self._waiting += 1
        try:
            # A client that disconnects cancels its job if it has not started yet.
            return await asyncio.wrap_future(self._submit(lambda: self._job(job, args, kwargs)))
        finally:
            with self._waiting_lock:
                self._waiting -= 1

    def _job(self, job: Callable[..., T], args: tuple, kwargs: dict[str, Any]) -> T:
        self.refresh()
        return job(*args, **kwargs)

    def refresh(self) -> bool:
        """Reload the bundle if its CURRENT pointer names another version; True if it did. Worker only.

        A failed reload (a damaged new version) keeps serving the loaded one and says why in health."""
        from rag.index_bundle import BundleError, resolve_version
        from rag.retriever import Retriever

        try:
            if resolve_version(self.index_dir) == self._rag.retriever.bundle.root:
                return False
            old = self._rag.retriever
            retriever = Retriever.load(self.index_dir, text_encoder=old.text_encoder,
                                       image_encoder=old.image_encoder, device=self.device)
        except (BundleError, OSError, ValueError) as exc:
            log.error("index reload failed, still serving %s: %s", self.version, exc)
            self.error = f"reload failed, serving {self.version}: {exc}"
            return False
        self._rag.retriever = retriever
        self._install(self._rag)
        self.error = None
        log.info("reloaded index %s: now %s, %d documents", self.index_dir, self.version, len(self._docs))
        return True

    # --- jobs (run on the worker through `run`) -----------------------------------------------------

    def ask(self, question: str, image: Image.Image | None, options: list[str] | None, mode: str, k: int | None,
            retrieval: bool, abstain: bool, max_new_tokens: int) -> dict[str, Any]:
        """`medrag ask --json` for one question."""
        return self._rag.ask(question, image=image, options=options, mode=mode, k=k, retrieval=retrieval,
                             abstain=abstain, max_new_tokens=max_new_tokens).to_json()

    def retrieve(self, question: str | None, image: Image.Image | None, k: int) -> dict[str, Any]:
        """`medrag retrieve --json`: ranked evidence, routing and the selection cut."""
        from rag.selection import select_hits

        retriever = self._rag.retriever
        result = retriever.retrieve(question, image=image, k=k)
        _, selection = select_hits(result.hits, retriever.bundle.selection)
        return result.to_json(selection)

    # --- bundle lookups (no model: run anywhere) ----------------------------------------------------

    def evidence_image(self, doc_id: str, n: int = 0) -> Path:
        """Image `n` of the document `doc_id`; only images of documents in the served bundle can be named."""
        # The id is only ever a key of the bundle's documents, never joined to a path; a path-like id is
        # refused by name so that a traversal attempt reads as one in the client's log.
        segments = set(doc_id.replace("\\", "/").split("/"))
        if not doc_id or "\0" in doc_id or doc_id.startswith("/") or {".", ".."} & segments:
            raise ApiError(400, f"evidence id {doc_id!r} is a path, not a document id", "id")
        doc = self._docs.get(doc_id)
        if doc is None:
            raise ApiError(404, f"no document {doc_id!r} in index {self.index_dir.name} ({self.version})", "id")
        if not 0 <= n < len(doc.images):
            raise ApiError(404, f"document {doc_id!r} has {len(doc.images)} image(s); n={n} does not exist", "n")
        path = Path(doc.images[n])
        if not path.is_file():
            raise ApiError(404, f"the image file of {doc_id!r} is missing on the server", "id")
        return path

    def examples(self, per_domain: int = 2) -> list[dict[str, Any]]:
        """A few documents with images from each domain, for the page's example picker."""
        picked: dict[str, list[dict[str, Any]]] = {}
        for doc in self._docs.values():
            chosen = picked.setdefault(doc.domain, [])
            if doc.images and len(chosen) < per_domain:
                chosen.append({"id": doc.id, "title": doc.title, "domain": doc.domain,
                               "image": f"/api/evidence/{quote(doc.id, safe='')}/image"})
        return [e for domain in sorted(picked) for e in picked[domain]]

    def index_info(self) -> dict[str, Any]:
        """`medrag index info --json` for the served bundle's folder."""
        from rag.index_build import bundle_info
        from rag.index_bundle import BundleError

        try:
            return bundle_info(self.index_dir)
        except BundleError as exc:  # the folder was removed or damaged after the server loaded it
            raise ApiError(503, f"the index cannot be read now: {exc}") from None
