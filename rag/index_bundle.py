"""The index bundle on disk (DESIGN §4): versioned, checksummed, written atomically, no pickle.

    indexes/NAME/
      CURRENT                 name of the live version folder (replaced atomically)
      v-<stamp>/              one complete bundle
        manifest.json         format version, encoders + fingerprints, domains, counts, checksums,
                              head training logs, calibrated selection and routing parameters
        docs.jsonl            the document store: one Document per line plus its stable number
        images.json           image row -> document number (the image channel indexes images)
        <domain>/{text,image,joint}.faiss   FAISS IndexIDMap2 over inner-product indexes
        lexical/              the BM25 channel (lexical.json, see rag.lexical)
        heads.safetensors     domain router and aligner weights

A writer builds a new version folder completely, then swaps CURRENT with one rename. Readers
resolve CURRENT once, so they see the old or the new bundle, never a mixture; the previous version
is kept so a reader that resolved it just before the swap can still finish loading.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
from safetensors.torch import load_file, save_file

from finetune.heads import Aligner, DomainRouter
from rag.corpus import Document
from rag.lexical import LexicalIndex
from rag.selection import SelectionConfig

FORMAT_VERSION = 1
CHANNELS = ("text", "image", "joint")
POINTER = "CURRENT"


class BundleError(RuntimeError):
    """A bundle cannot be used; the message says what is wrong and what to do."""


@dataclass
class IndexBundle:
    """Everything a retriever needs, in memory. Document numbers are stable across add/remove."""

    manifest: dict[str, Any]
    docs: dict[int, Document]                 # document number -> document (removed ones are absent)
    image_owner: dict[int, int]               # image row -> document number
    vectors: dict[tuple[str, str], faiss.Index]  # (domain, channel) -> IndexIDMap2
    lexical: LexicalIndex
    router: DomainRouter
    aligner: Aligner
    selection: SelectionConfig
    root: Path | None = None                  # the version folder it was loaded from
    domains: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.domains = list(self.manifest["domains"])


def new_vector_index(dim: int) -> faiss.Index:
    """Exact inner product on normalised vectors (cosine), with our own stable int64 ids."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_version(bundle_dir: str | Path) -> Path:
    """The live version folder of a bundle directory."""
    bundle_dir = Path(bundle_dir)
    pointer = bundle_dir / POINTER
    if not bundle_dir.is_dir():
        raise BundleError(f"no index at {bundle_dir}: build one with `medrag index build --corpus C.jsonl --out {bundle_dir}`")
    if not pointer.is_file():
        raise BundleError(f"{bundle_dir} is not an index bundle (no {POINTER} file); rebuild it with `medrag index build`")
    version = bundle_dir / pointer.read_text(encoding="utf-8").strip()
    if not (version / "manifest.json").is_file():
        raise BundleError(f"{bundle_dir}: {POINTER} points at {version.name}, which has no manifest.json; "
                          f"the bundle is damaged: rebuild it with `medrag index build`")
    return version


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    version = resolve_version(bundle_dir)
    try:
        return json.loads((version / "manifest.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{version}/manifest.json is damaged ({exc}); rebuild the index with `medrag index build`") from exc


def verify_files(version: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems with the bundle's files against the manifest checksums (empty list = intact)."""
    problems = []
    for rel, expected in manifest.get("files", {}).items():
        path = version / rel
        if not path.is_file():
            problems.append(f"missing file {rel}")
        elif _sha256(path) != expected:
            problems.append(f"checksum mismatch in {rel} (the file was changed or damaged)")
    return problems


def check_format(manifest: dict[str, Any], where: Path) -> None:
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{where} has bundle format version {version}, this medvlm-rag reads version "
                          f"{FORMAT_VERSION}: rebuild it with `medrag index build` (same corpus, same spec)")


def check_encoders(manifest: dict[str, Any], text_fingerprint: str, image_fingerprint: str) -> None:
    """Refuse to query a bundle with encoders other than the ones it was built with."""
    for role, fingerprint in (("text", text_fingerprint), ("image", image_fingerprint)):
        built = manifest["encoders"][role]
        if built["fingerprint"] != fingerprint:
            raise BundleError(
                f"this index was built with the {role} encoder '{built['name']}' (fingerprint {built['fingerprint']}), "
                f"but the loaded {role} encoder has fingerprint {fingerprint}: load it with the same encoder "
                f"(omit the override), or rebuild the index with `medrag index build --{role}-encoder NAME`")


def load_bundle(bundle_dir: str | Path, verify: bool = True) -> IndexBundle:
    version = resolve_version(bundle_dir)
    manifest = read_manifest(bundle_dir)
    check_format(manifest, version)
    if verify:
        problems = verify_files(version, manifest)
        if problems:
            raise BundleError(f"index {bundle_dir} is damaged: {'; '.join(problems)}. Rebuild it with "
                              f"`medrag index build`, or check it with `medrag index verify {bundle_dir}`")
    docs: dict[int, Document] = {}
    with open(version / "docs.jsonl", encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            number = record.pop("num")
            docs[number] = Document(**record)
    image_owner = {int(k): v for k, v in json.loads((version / "images.json").read_text()).items()}
    vectors = {}
    for domain in manifest["domains"]:
        for channel in CHANNELS:
            path = version / domain / f"{channel}.faiss"
            if path.is_file():
                vectors[(domain, channel)] = faiss.read_index(str(path))
    dims = manifest["dims"]
    router = DomainRouter(dims["image"], dims["text"], len(manifest["domains"]))
    aligner = Aligner(dims["image"], dims["text"], dims["joint"])
    weights = load_file(str(version / "heads.safetensors"))
    router.load_state_dict({k.removeprefix("router."): v for k, v in weights.items() if k.startswith("router.")})
    aligner.load_state_dict({k.removeprefix("aligner."): v for k, v in weights.items() if k.startswith("aligner.")})
    router.eval()
    aligner.eval()
    return IndexBundle(manifest=manifest, docs=docs, image_owner=image_owner, vectors=vectors,
                       lexical=LexicalIndex.load(version / "lexical"), router=router, aligner=aligner,
                       selection=SelectionConfig.from_json(manifest["selection"]), root=version)


def save_bundle(bundle: IndexBundle, bundle_dir: str | Path, keep_versions: int = 2) -> Path:
    """Write `bundle` as a new version of `bundle_dir` and make it live atomically."""
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000_000:09d}"
    staging = bundle_dir / f".tmp-v-{stamp}-{os.getpid()}"
    final = bundle_dir / f"v-{stamp}"
    try:
        staging.mkdir()
        with open(staging / "docs.jsonl", "w", encoding="utf-8") as fh:
            for number in sorted(bundle.docs):
                fh.write(json.dumps({"num": number, **bundle.docs[number].to_json()}, ensure_ascii=False) + "\n")
        (staging / "images.json").write_text(json.dumps({str(k): v for k, v in sorted(bundle.image_owner.items())}))
        for (domain, channel), index in bundle.vectors.items():
            (staging / domain).mkdir(exist_ok=True)
            faiss.write_index(index, str(staging / domain / f"{channel}.faiss"))
        bundle.lexical.save(staging / "lexical")
        weights = {f"router.{k}": v.contiguous() for k, v in bundle.router.state_dict().items()}
        weights.update({f"aligner.{k}": v.contiguous() for k, v in bundle.aligner.state_dict().items()})
        save_file(weights, str(staging / "heads.safetensors"))
        manifest = dict(bundle.manifest)
        manifest["format_version"] = FORMAT_VERSION
        manifest["selection"] = bundle.selection.to_json()
        manifest["counts"] = _counts(bundle)
        manifest["files"] = {str(p.relative_to(staging)): _sha256(p)
                             for p in sorted(staging.rglob("*")) if p.is_file()}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        _fsync_tree(staging)
        os.replace(staging, final)
        _write_pointer(bundle_dir, final.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    bundle.manifest, bundle.root = manifest, final
    _prune(bundle_dir, keep_versions)
    return final


def _counts(bundle: IndexBundle) -> dict[str, Any]:
    per_domain: dict[str, dict[str, int]] = {}
    for domain in bundle.domains:
        per_domain[domain] = {"documents": sum(1 for d in bundle.docs.values() if d.domain == domain)}
        for channel in CHANNELS:
            index = bundle.vectors.get((domain, channel))
            per_domain[domain][channel] = int(index.ntotal) if index is not None else 0
    return {"documents": len(bundle.docs), "images": len(bundle.image_owner), "per_domain": per_domain}


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def _write_pointer(bundle_dir: Path, version_name: str) -> None:
    tmp = bundle_dir / f".{POINTER}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(version_name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, bundle_dir / POINTER)
    dir_fd = os.open(bundle_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _prune(bundle_dir: Path, keep: int) -> None:
    """Drop old versions and leftovers of killed writers; the live one and its predecessor stay."""
    live = (bundle_dir / POINTER).read_text(encoding="utf-8").strip()
    versions = sorted(p for p in bundle_dir.glob("v-*") if p.is_dir())
    stale = [p for p in versions if p.name != live][: max(0, len(versions) - keep)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    for leftover in bundle_dir.glob(".tmp-v-*"):
        if leftover.stat().st_mtime < time.time() - 3600:
            shutil.rmtree(leftover, ignore_errors=True)
