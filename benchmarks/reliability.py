"""Reliability report: the fault-injection catalogue run against the real CLI and API.

    python benchmarks/reliability.py [--kills N] [--seed S]

Faults: each kind of damaged corpus record (build and add must refuse it by line number and leave
the index untouched; `--skip-bad` must leave it out), each kind of bundle damage (load and
`medrag index verify` must refuse it), SIGKILL of `index build` / `index add` processes at N points
(the bundle must load as the old or the new one), and concurrent readers (threads on one retriever
agree with serial calls; loads during an add see the old or the new bundle). Everything runs in a
temporary folder on a small sample corpus. Writes benchmarks/results/reliability.json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from PIL import Image  # noqa: E402

from rag.corpus import copy_corpus_slice, read_qa  # noqa: E402
from rag.encoders import create_image_encoder, create_text_encoder  # noqa: E402
from rag.index_build import build_index  # noqa: E402
from rag.index_bundle import MANIFEST_DIGEST, POINTER, BundleError, load_bundle, resolve_version, verify_bundle  # noqa: E402
from rag.reporting import machine_description, now  # noqa: E402
from rag.retriever import Retriever  # noqa: E402
from sample_corpus.build import build_sample_corpus  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
ROWS: list[dict[str, str | bool]] = []


def record(group: str, fault: str, expected: str, observed: str, ok: bool) -> None:
    ROWS.append({"group": group, "fault": fault, "expected": expected, "observed": observed, "pass": bool(ok)})
    print(f"[{'PASS' if ok else 'FAIL'}] {group}: {fault} -> {observed}", flush=True)


def run_cli(argv: list[str]) -> tuple[int, str]:
    """`medrag ARGV` as a user runs it: its exit code and what it printed to stderr (a traceback included)."""
    proc = subprocess.run([sys.executable, "-m", "rag.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ})
    return proc.returncode, proc.stderr


def snapshot(bundle: Path) -> dict[str, str]:
    return {str(p.relative_to(bundle)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(bundle.rglob("*")) if p.is_file() and p.name != ".lock"}


def ids(bundle: Path) -> frozenset[str]:
    return frozenset(d.id for d in load_bundle(bundle).docs.values())


# --- 1. damaged corpora ---------------------------------------------------------------------------

def bad_records(folder: Path) -> dict[str, bytes]:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    (images / "notes.png").write_text("a text file named .png")
    Image.new("RGB", (8, 8)).save(folder.parent / "outside.png")
    (images / "truncated.png").write_bytes((folder.parent / "outside.png").read_bytes()[:40])
    Image.new("1", (9000, 9000)).save(images / "bomb.png")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    (images / "bomb_header.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
                                             + chunk(b"IDAT", zlib.compress(b"\0" * 4)) + chunk(b"IEND", b""))
    for name, target in (("link_out.png", folder.parent / "outside.png"), ("loop.png", images / "loop.png")):
        if not (images / name).is_symlink():
            (images / name).symlink_to(target)

    def doc(**fields) -> bytes:
        base = {"id": "bad", "domain": "radiology", "title": "t", "text": "report", "images": []}
        return json.dumps({**base, **fields}).encode()
    return {
        "truncated JSON": b'{"id": "bad", "domain": "radiology", "text": "rep',
        "JSON that is not an object": b"[1, 2, 3]",
        "wrong type (text is a number)": doc(text=5),
        "wrong type (images is a string)": doc(images="images/x.png"),
        "missing required field (title)": json.dumps({"id": "bad", "domain": "radiology", "text": "r"}).encode(),
        "invalid UTF-8 (Latin-1 text)": b'{"id": "bad", "domain": "radiology", "title": "t", "text": "caf\xe9"}',
        "unpaired surrogate escape": doc(text="x\ud800"),
        "JSON nested 100,000 deep": doc()[:-1] + b', "metadata": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        "names value not a string": doc(names={"zh": 5}),
        "image entry not a string": doc(images=[5]),
        "duplicate id": doc(id="DUP"),
        "unknown domain": doc(domain="dermatology"),
        "empty text": doc(text="   "),
        "image path ../ escape": doc(images=["../outside.png"]),
        "absolute image path": doc(images=["/etc/passwd"]),
        "symlink out of the corpus": doc(images=["images/link_out.png"]),
        "symlink loop": doc(images=["images/loop.png"]),
        "NUL byte in image path": doc(images=["images/a\x00b.png"]),
        "image path too long for the OS": doc(images=["images/" + "x" * 300 + ".png"]),
        "missing image file": doc(images=["images/missing.png"]),
        "text file named .png": doc(images=["images/notes.png"]),
        "truncated PNG": doc(images=["images/truncated.png"]),
        "decompression bomb (81 MP bilevel PNG)": doc(images=["images/bomb.png"]),
        "PNG header claiming 100000x100000": doc(images=["images/bomb_header.png"]),
    }


def damaged_corpora(work: Path, corpus: Path, index: Path) -> None:
    folder = work / "damaged"
    good = copy_corpus_slice(corpus, folder, "good.jsonl", slice(0, 3)).read_bytes().splitlines()
    before = snapshot(index)
    records = bad_records(folder)
    for kind, line in records.items():
        path = folder / "case.jsonl"
        dup = [json.dumps({"id": "DUP", "domain": "radiology", "title": "t", "text": "r"}).encode()] \
            if kind == "duplicate id" else []
        path.write_bytes(b"\n".join(good + dup + [line]) + b"\n")
        where = f"{path}:{len(good) + len(dup) + 1}"
        observed, ok = [], True
        for argv in (["index", "build", "--corpus", str(path), "--out", str(index)],
                     ["index", "add", str(index), "--corpus", str(path)]):
            code, err = run_cli(argv)
            step_ok = code == 2 and where in err and "Traceback" not in err
            ok &= step_ok
            observed.append(f"{argv[1]}: exit {code}, {'names line' if where in err else 'NO line'}")
        intact = snapshot(index) == before and bool(load_bundle(index).docs)
        ok &= intact
        record("damaged corpus", kind, "build/add exit 2 naming the line; index unchanged",
               "; ".join(observed) + ("; index unchanged" if intact else "; INDEX CHANGED"), ok)

    path = folder / "all.jsonl"
    good.append(json.dumps({"id": "DUP", "domain": "radiology", "title": "t", "text": "r"}).encode())  # its duplicate is bad
    path.write_bytes(b"\n".join(good[:2] + [good[3]] + list(records.values()) + good[2:3]) + b"\n")
    out = work / "skip-bad"
    code, err = run_cli(["index", "build", "--corpus", str(path), "--out", str(out), "--skip-bad", "--json"])
    kept = sorted(ids(out)) if code == 0 else []
    skipped = len(load_bundle(out).manifest.skipped_records or []) if code == 0 else 0
    expected_ids = sorted(json.loads(line)["id"] for line in good)
    record("damaged corpus", f"all {len(records)} kinds in one file, --skip-bad",
           f"build succeeds with the {len(good)} good records; bad ones listed",
           f"exit {code}; kept {len(kept)} documents; {skipped} problems recorded in the manifest",
           code == 0 and kept == expected_ids and skipped >= len(records))


# --- 2. damaged bundles ---------------------------------------------------------------------------

def damaged_bundles(work: Path, index: Path, encoders) -> None:
    copy = work / "bundle"
    shutil.copytree(index, copy, symlinks=True)
    version = resolve_version(copy)

    def check(fault: str, damage: Callable[[], Callable[[], None]], match: str = "") -> None:
        restore = damage()
        try:
            try:
                Retriever(load_bundle(copy), *encoders)
                loaded = "loaded"
            except BundleError as exc:
                loaded = "refused" if ("medrag index" in str(exc) or "rebuild" in str(exc)) and match in str(exc) \
                    else f"refused without a remedy: {exc}"
            # the encoder check loads both models (seconds); only the encoder fault needs it
            code, _ = run_cli(["index", "verify", str(copy), "--json"] + ([] if "encoder" in fault else ["--no-encoders"]))
        finally:
            restore()
        record("damaged bundle", fault, "load refused with what to do; `index verify` exit 1",
               f"load {loaded}; verify exit {code}", loaded == "refused" and code == 1)

    def rewrite(path: Path, data: bytes) -> Callable[[], None]:
        original = path.read_bytes()
        path.write_bytes(data)
        return lambda: path.write_bytes(original)

    def flip(path: Path) -> Callable[[], None]:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x20
        return rewrite(path, bytes(data))

    def remove(path: Path) -> Callable[[], None]:
        moved = path.with_name(path.name + ".moved")
        path.rename(moved)
        return lambda: moved.rename(path)

    def manifest_edit(change: Callable[[dict], None], resign: bool) -> Callable[[], None]:
        saved = {p: p.read_bytes() for p in (version / "manifest.json", version / MANIFEST_DIGEST)}
        manifest = json.loads(saved[version / "manifest.json"])
        change(manifest)
        (version / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if resign:  # as a writer with other encoders would: the checksums are right, the encoders are not
            (version / MANIFEST_DIGEST).write_text(hashlib.sha256((version / "manifest.json").read_bytes()).hexdigest())

        def restore() -> None:
            for path, data in saved.items():
                path.write_bytes(data)
        return restore

    files = sorted(p for p in version.rglob("*") if p.is_file())
    for path in files:
        check(f"flipped byte in {path.relative_to(version)}", lambda p=path: flip(p))
    for path in files:
        if path.name != MANIFEST_DIGEST:  # its absence is tolerated on load (older bundles); verify reports it
            check(f"missing {path.relative_to(version)}", lambda p=path: remove(p))
    check("CURRENT pointing outside the bundle (../)", lambda: rewrite(copy / POINTER, b"../elsewhere\n"))
    check("CURRENT not UTF-8", lambda: rewrite(copy / POINTER, b"\xff\xfe-garbage\n"))
    check("manifest of format version 99", lambda: manifest_edit(lambda m: m.update(format_version=99), False),
          "format version 99")
    check("built with another text encoder (fingerprint)", lambda: manifest_edit(
        lambda m: m["encoders"]["text"].update(fingerprint="0123456789abcdef"), True), "built with the text encoder")


# --- 3. SIGKILL during build and add --------------------------------------------------------------

def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rag.cli", *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ})


def _kill(proc: subprocess.Popen, bundle: Path, point: str, rng: random.Random, duration: float) -> str:
    if point == "staging":
        known = set(bundle.glob(".tmp-v-*"))
        while proc.poll() is None:
            if set(bundle.glob(".tmp-v-*")) - known:
                time.sleep(rng.uniform(0, 0.03))
                proc.kill()
                proc.wait()
                return "killed while writing"
            time.sleep(0.002)
        return "finished before the kill"
    delay = rng.uniform(0.2, duration)
    try:
        proc.wait(timeout=delay)
        return f"finished before the kill at {delay:.1f} s"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return f"killed at {delay:.1f} s"


def sigkills(work: Path, corpus: Path, encoders, kills: int, rng: random.Random) -> None:
    folder = work / "kill"
    old_corpus = copy_corpus_slice(corpus, folder, "old.jsonl", slice(0, 8))
    new_corpus = copy_corpus_slice(corpus, folder, "new.jsonl", slice(8, 14))
    extra = copy_corpus_slice(corpus, folder, "extra.jsonl", slice(14, 17))
    out = folder / "index"

    def fresh() -> frozenset[str]:
        if out.exists():
            shutil.rmtree(out)
        build_index(old_corpus, out, progress=False, text_encoder=encoders[0], image_encoder=encoders[1])
        return ids(out)

    old = fresh()
    started = time.perf_counter()
    assert _start(["index", "build", "--corpus", str(new_corpus), "--out", str(folder / "timing")]).wait() == 0
    duration = time.perf_counter() - started
    new_build = ids(folder / "timing")
    added = old | frozenset(json.loads(line)["id"] for line in extra.read_text().splitlines())
    for command, new in (("build", new_build), ("add", added)):
        for i in range(kills):
            if ids(out) != old:
                fresh()
            argv = (["index", "build", "--corpus", str(new_corpus), "--out", str(out)] if command == "build"
                    else ["index", "add", str(out), "--corpus", str(extra)])
            point = "staging" if i % 2 else "random"
            what = _kill(_start(argv), out, point, rng, duration)
            try:
                got = ids(out)
                state = "old" if got == old else "new" if got == new else "MIXED"
                problems = verify_bundle(out, encoders=False)
            except BundleError as exc:
                state, problems = f"UNLOADABLE ({exc})", ["unloadable"]
            record("SIGKILL", f"index {command}, kill {i + 1} ({point})", "bundle loads; old or new; verifies",
                   f"{what}; bundle is the {state} one; verify {'ok' if not problems else problems}",
                   state in ("old", "new") and not problems)
    leftovers_before = len(list(out.glob(".tmp-v-*")))
    proc = _start(["index", "add", str(out), "--corpus", str(extra)] if ids(out) == old
                  else ["index", "remove", str(out), sorted(added - old)[0]])
    code = proc.wait()
    leftovers = len(list(out.glob(".tmp-v-*")))
    versions = len(list(out.glob("v-*")))
    record("SIGKILL", "clean rerun after the kills", "completes; killed writers' staging folders removed",
           f"exit {code}; staging folders {leftovers_before} -> {leftovers}; {versions} version folders",
           code == 0 and leftovers == 0 and versions <= 2)


# --- 4. concurrency -------------------------------------------------------------------------------

def concurrency(work: Path, corpus: Path, index: Path, encoders) -> None:
    items = [q for q in read_qa(corpus / "qa.jsonl") if q.split == "test"][:20]
    queries = [(q.question, str(corpus / q.image) if q.image else None) for q in items]

    def answer(retriever: Retriever, query: tuple[str, str | None]) -> list[tuple[str, float]]:
        return [(h.doc.id, round(h.score, 9)) for h in retriever.retrieve(query[0], image=query[1], k=10).hits]

    shared = Retriever(load_bundle(index), *encoders)       # fresh: the first searches race to build BM25
    work_items = [q for q in queries for _ in range(4)]
    random.Random(0).shuffle(work_items)
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda q: (q, answer(shared, q)), work_items))
    serial_retriever = Retriever(load_bundle(index), *encoders)
    serial = {q: answer(serial_retriever, q) for q in queries}
    differing = sum(a != serial[q] for q, a in concurrent)
    record("concurrency", f"{len(work_items)} retrievals from 8 threads on one retriever", "same hits as serial calls",
           f"{differing} differ", differing == 0)

    copy = work / "readers"
    shutil.copytree(index, copy, symlinks=True)
    old = len(load_bundle(copy).docs)
    writer = _start(["index", "add", str(copy), "--corpus", str(corpus / "corpus_added.jsonl")])
    seen, failures = [], []
    while writer.poll() is None:
        try:
            seen.append(len(load_bundle(copy).docs))
        except (BundleError, OSError, ValueError) as exc:
            failures.append(str(exc))
    seen.append(len(load_bundle(copy).docs))
    counts = sorted(set(seen))
    record("concurrency", "reader loading the bundle in a loop while `index add` runs",
           "every load succeeds with the old or the new document count",
           f"{len(seen)} loads, {len(failures)} failed, counts seen {counts} (old {old})",
           writer.returncode == 0 and not failures and counts[0] == old and len(counts) <= 2 and seen == sorted(seen))


def write_report(args: argparse.Namespace, seconds: float) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    meta = {"command": "python benchmarks/reliability.py" + (f" --kills {args.kills}" if args.kills != 3 else "")
            + (f" --seed {args.seed}" if args.seed else ""), "machine": machine_description(),
            "date": now(), "git_commit": commit, "seconds": round(seconds, 1),
            "passed": sum(r["pass"] for r in ROWS), "total": len(ROWS)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps({**meta, "rows": ROWS}, indent=2, ensure_ascii=False) + "\n")
    lines = ["# Reliability report", "", *[f"- {k.replace('_', ' ')}: {v}" for k, v in meta.items()
                                           if k not in ("passed", "total")],
             f"- result: {meta['passed']}/{meta['total']} passed", "",
             "| group | input / fault | expected | observed | pass |", "|---|---|---|---|---|"]
    lines += [f"| {r['group']} | {r['fault']} | {r['expected']} | {str(r['observed']).replace('|', '/')} | "
              f"{'pass' if r['pass'] else '**FAIL**'} |" for r in ROWS]
    (RESULTS / "reliability.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="SIGKILL points per command (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    rng = random.Random(args.seed)
    encoders = (create_text_encoder(), create_image_encoder())
    with tempfile.TemporaryDirectory(prefix="medrag-reliability-") as tmp:
        work = Path(tmp)
        corpus = work / "corpus"
        build_sample_corpus(corpus, seed=0, images_per_doc=2, query_images_per_doc=1,
                            domains=("tcm_tongue", "radiology"), progress=False)
        index = work / "index"
        build_index(copy_corpus_slice(corpus, work / "base", "base.jsonl", slice(0, 24)), index, progress=False,
                    text_encoder=encoders[0], image_encoder=encoders[1])
        damaged_corpora(work, corpus, index)
        damaged_bundles(work, index, encoders)
        sigkills(work, corpus, encoders, args.kills, rng)
        concurrency(work, corpus, index, encoders)
    write_report(args, time.perf_counter() - started)
    failed = [r for r in ROWS if not r["pass"]]
    print(f"{len(ROWS) - len(failed)}/{len(ROWS)} passed; report in {RESULTS / 'reliability.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
