"""`medrag serve` in a subprocess, and many HTTP clients asking it at once: the load test.

`benchmarks/serve_load.py` writes the report; `tests/test_serve_e2e.py` runs a smaller version. The
server is the real command (`python -m rag.cli serve`), reached over localhost: what a deployment
runs. A load run first asks every distinct question once, one after another (the serial answers),
then lets `clients` threads ask the whole list at once, and compares: every concurrent answer must
equal the serial answer to the same question (all of the JSON but the timings). It samples the
server's resident memory throughout, so growth over hundreds of requests shows.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from rag.corpus import read_qa

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Question:
    question: str
    image: Path | None
    options: tuple[str, ...]


@dataclass
class Server:
    url: str
    pid: int                  # the server process, whose memory a load run samples
    token: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(index: str | Path, generator: str, token: str | None = None, startup_s: float = 600,
                   log: Path | None = None, extra: Sequence[str] = ()) -> Iterator[Server]:
    """`medrag serve` on a free localhost port (`extra`: more flags), yielded once /api/health says ready;
    stopped after."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "rag.cli", "serve", "--index", str(index), "--generator", generator,
               "--port", str(port), *extra] + (["--token", token] if token else [])
    out = open(log, "wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process.pid, token)
    try:
        _wait_ready(server, startup_s, process)
        yield server
    finally:
        process.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly on SIGINT
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log:
            out.close()


def _wait_ready(server: Server, startup_s: float, process: subprocess.Popen | None = None) -> None:
    """Poll /api/health until it says ready (200); fail early if `process` exits or loading failed."""
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"medrag serve exited with {process.returncode} before it was ready")
        try:
            health = httpx.get(f"{server.url}/api/health", headers=server.headers, timeout=5)
            if health.status_code == 200:
                return
            if health.json().get("status") == "failed":
                raise RuntimeError(f"medrag serve failed to load: {health.json().get('error')}")
        except httpx.TransportError:
            pass  # the port is not open yet
        time.sleep(0.5)
    raise TimeoutError(f"medrag serve was not ready within {startup_s:.0f} s")


def mixed_questions(qa: str | Path, n: int, seed: int = 0, split: str = "test") -> list[Question]:
    """Up to `n` closed questions of `split`, alternating with and without an image."""
    root = Path(qa).parent
    items = [q for q in read_qa(qa) if q.split == split and q.options]
    random.Random(seed).shuffle(items)
    with_image = [Question(q.question, root / q.image, tuple(q.options)) for q in items if q.image]
    text_only = [Question(q.question, None, tuple(q.options)) for q in items if not q.image]
    mixed = [q for pair in zip(with_image, text_only) for q in pair]
    if not mixed:
        raise ValueError(f"{qa} has no closed {split} questions both with and without an image")
    return mixed[:n]


def ask(client: httpx.Client, server: Server, item: Question, timeout: float = 300) -> httpx.Response:
    files = {"image": (item.image.name, item.image.read_bytes(), "application/octet-stream")} if item.image else None
    return client.post(f"{server.url}/api/ask", data={"question": item.question, "options": list(item.options)},
                       files=files, headers=server.headers, timeout=timeout)


def comparable(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without its timings: what must not depend on when or beside what it was asked."""
    return {k: v for k, v in answer.items() if k != "timings_ms"}


@dataclass
class LoadResult:
    clients: int
    requests: int
    distinct: int
    seconds: float
    errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    serial_latencies: list[float] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)   # (seconds since start, MB)

    def summary(self) -> dict[str, Any]:
        rss = [mb for _, mb in self.rss_mb]
        quarter = max(1, len(rss) // 4)
        return {"clients": self.clients, "requests": self.requests, "distinct_questions": self.distinct,
                "completed": len(self.latencies), "errors": len(self.errors), "error_examples": self.errors[:5],
                "mismatches": len(self.mismatches), "mismatch_examples": self.mismatches[:5],
                "seconds": round(self.seconds, 1), "throughput_rps": round(len(self.latencies) / self.seconds, 3),
                "latency_s": _percentiles(self.latencies), "serial_latency_s": _percentiles(self.serial_latencies),
                "rss_mb": {"first_quarter_mean": round(float(np.mean(rss[:quarter])), 1) if rss else None,
                           "last_quarter_mean": round(float(np.mean(rss[-quarter:])), 1) if rss else None,
                           "max": round(max(rss), 1) if rss else None, "samples": len(rss)}}


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    return {"p50": round(float(np.percentile(values, 50)), 3), "p95": round(float(np.percentile(values, 95)), 3),
            "max": round(float(max(values)), 3)}


def run_load(server: Server, questions: Sequence[Question], clients: int, requests: int,
             deadline_s: float = 1800, seed: int = 0) -> LoadResult:
    """Serial answers to each of `questions`, then `requests` asks of them from `clients` threads at once."""
    result = LoadResult(clients, requests, len(questions), 0.0)
    with httpx.Client() as client:
        serial: dict[Question, dict[str, Any]] = {}
        for item in questions:
            t = time.perf_counter()
            response = ask(client, server, item)
            result.serial_latencies.append(time.perf_counter() - t)
            if response.status_code != 200:
                raise RuntimeError(f"serial ask failed ({response.status_code}): {response.text[:300]}")
            serial[item] = comparable(response.json())
    work: queue.SimpleQueue[Question] = queue.SimpleQueue()
    order = [questions[i % len(questions)] for i in range(requests)]
    random.Random(seed).shuffle(order)
    for item in order:
        work.put(item)
    lock = threading.Lock()
    stop_sampling = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(server.pid, result, stop_sampling), daemon=True)
    started = time.perf_counter()
    deadline = time.monotonic() + deadline_s
    barrier = threading.Barrier(clients)

    def client_loop() -> None:
        barrier.wait()  # every client starts together: the queue fills at once
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                try:
                    item = work.get_nowait()
                except queue.Empty:
                    return
                t = time.perf_counter()
                try:
                    response = ask(client, server, item, timeout=max(1.0, deadline - time.monotonic()))
                except httpx.HTTPError as exc:
                    with lock:
                        result.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                seconds = time.perf_counter() - t
                with lock:
                    if response.status_code != 200:
                        result.errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                    else:
                        result.latencies.append(seconds)
                        if comparable(response.json()) != serial[item]:
                            result.mismatches.append(item.question)

    sampler.start()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    stop_sampling.set()
    sampler.join()
    unasked = work.qsize()
    if unasked:
        result.errors.append(f"deadline of {deadline_s:.0f} s reached with {unasked} requests not sent")
    return result


def _sample_rss(pid: int, result: LoadResult, stop: threading.Event, every_s: float = 0.5) -> None:
    process = psutil.Process(pid)
    started = time.perf_counter()
    while not stop.is_set():
        result.rss_mb.append((time.perf_counter() - started, process.memory_info().rss / 2**20))
        stop.wait(every_s)
