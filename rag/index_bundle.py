"""The index bundle on disk (docs/design.md §4): versioned, checksummed, written atomically, no pickle.

    indexes/NAME/
      CURRENT                 name of the live version folder (replaced atomically)
      v-<stamp>/              one complete bundle
        manifest.json         format version, encoders + fingerprints, domains, counts, checksums,
                              head training logs, calibrated selection and routing parameters
                              (read and written through `rag.manifest.Manifest`)
        manifest.sha256       the manifest's own checksum (the manifest holds everyone else's)
        docs.jsonl            the document store: one Document per line plus its stable number
        images.json           image row -> document number (the image channel indexes images)
        <domain>/{text,image,joint}.faiss   one FAISS index per channel (inner product, stable ids):
                              flat, HNSW, IVF-Flat or IVF-PQ (see rag.vector_index); a sharded
                              bundle has <channel>.00.faiss, <channel>.01.faiss, … instead
        lexical/              the BM25 channel (lexical.json, see rag.lexical)
        heads.safetensors     domain router and aligner weights

A writer builds a new version folder completely, then swaps CURRENT with one rename. Readers
resolve CURRENT once, so they see the old or the new bundle, never a mixture; the previous version
is kept so a reader that resolved it just before the swap can still finish loading. Writers swap
and prune under an exclusive lock on `.lock`, so the leftovers of a killed writer (a staging folder,
a version folder that never went live) can be told apart from a live writer's work and removed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
from safetensors.torch import load_file, save_file

from rag.heads import Aligner, DomainRouter, ImageWhitening
from rag.corpus import Document
from rag.fusion import CHANNELS, default_weights
from rag.lexical import LexicalIndex
from rag.manifest import FORMAT_VERSION, BundleError, Manifest, VectorIndexInfo, check_format
from rag.selection import SelectionConfig
from rag.vector_index import ChannelIndex, VectorIndexConfig, check_search_params

VECTOR_CHANNELS = ("text", "image", "joint")  # the channels with a vector index (bm25 has its own)
POINTER = "CURRENT"
MANIFEST_DIGEST = "manifest.sha256"
LOCK = ".lock"
UPDATE_LOCK = ".update.lock"


@dataclass
class IndexBundle:
    """Everything a retriever needs, in memory. Document numbers are stable across add/remove.

    Code outside this module asks the bundle (routing threshold, fusion weights, encoder names, …)
    rather than reading its manifest.
    """

    manifest: Manifest
    docs: dict[int, Document]                 # document number -> document (removed ones are absent)
    image_owner: dict[int, int]               # image row -> document number
    vectors: dict[tuple[str, str], ChannelIndex]  # (domain, channel) -> its FAISS shards
    lexical: LexicalIndex
    router: DomainRouter
    aligner: Aligner
    selection: SelectionConfig
    root: Path | None = None                  # the version folder it was loaded from
    domains: list[str] = field(default_factory=list)
    vector_config: VectorIndexConfig = field(default_factory=VectorIndexConfig)
    search_params: dict[str, int] = field(default_factory=dict)  # nprobe / ef_search used by queries
    whitening: ImageWhitening | None = None   # the image channel's transform (None: the identity)

    def __post_init__(self) -> None:
        self.domains = list(self.manifest.domains)
        if self.whitening is None:
            self.whitening = ImageWhitening.identity(self.manifest.dims.image)
        self.search_params = {**self.vector_config.search_params(), **self.search_params}

    @property
    def encoder_names(self) -> dict[str, str]:
        """The encoders the bundle was built with: {"text": name, "image": name}."""
        return {role: info.name for role, info in self.manifest.encoders.items()}

    def check_encoders(self, text_fingerprint: str, image_fingerprint: str) -> None:
        """Refuse to query a bundle with encoders other than the ones it was built with."""
        for role, fingerprint in (("text", text_fingerprint), ("image", image_fingerprint)):
            built = self.manifest.encoders[role]
            if built.fingerprint != fingerprint:
                raise BundleError(
                    f"this index was built with the {role} encoder '{built.name}' (fingerprint {built.fingerprint}), "
                    f"but the loaded {role} encoder has fingerprint {fingerprint}: load it with the same encoder "
                    f"(omit the override), or rebuild the index with `medrag index build --{role}-encoder NAME`")

    @property
    def joint_native(self) -> bool:
        """Whether the joint channel is the encoders' own image-text space (CLIP) rather than the aligner's."""
        return bool(self.manifest.joint_native)

    @property
    def joint_searchable(self) -> bool:
        """Whether image -> text search means anything: a CLIP space, or an aligner that saw image-text
        pairs (a text-only corpus leaves it untrained, and its joint channel is then not searched)."""
        heads = self.manifest.heads  # absent in hand-made manifests: then nothing says it is untrained
        return self.joint_native or heads is None or bool(heads.aligner.get("n_train", 1))

    def channel_dim(self, channel: str) -> int:
        """Vector dimension of a channel ("text", "image" or "joint")."""
        dims = self.manifest.dims
        if channel == "joint":
            # a CLIP-style encoder's own space has the text dimension; otherwise the aligner's
            return dims.text if self.joint_native else dims.joint
        return {"text": dims.text, "image": dims.image}[channel]

    def build_setting(self, name: str) -> Any:
        """A setting of the spec the bundle was built with (seed, batch_size, …)."""
        if name not in self.manifest.spec:
            raise BundleError(f"the manifest of {self.root or 'this bundle'} has no spec setting {name!r}; "
                              f"rebuild the index with `medrag index build`")
        return self.manifest.spec[name]

    def take_numbers(self, documents: int, images: int) -> tuple[int, int]:
        """Reserve stable numbers for new documents and image rows; returns the first of each."""
        first = self.manifest.next_doc, self.manifest.next_image
        self.manifest.next_doc += documents
        self.manifest.next_image += images
        return first

    @property
    def routing_threshold(self) -> float:
        """Router confidence below which the top two domains are searched."""
        return float(self.manifest.routing.threshold)

    def fusion_weights(self, kind: str) -> dict[str, float]:
        """Per-channel fusion weights for a query kind: calibrated on val at build time, else the defaults
        from the corpus's own channel reliability (`rag.fusion.default_weights`)."""
        calibrated = (self.manifest.fusion or {}).get(kind)
        return dict(calibrated) if calibrated else default_weights(kind, self.manifest.channel_reliability)

    @property
    def unaligned(self) -> set[int]:
        """Documents added after the aligner was trained (`index add`): the joint space never saw them."""
        first = self.manifest.aligned_docs
        if first is None or first >= self.manifest.next_doc:  # nothing added since: the common case, no scan
            return set()
        return {n for n in self.docs if n >= first}

    def abstention_thresholds(self) -> dict[str, float]:
        """The thresholds calibrated at build time ("text", "image", "bm25"; a channel that had nothing to
        calibrate on, and every channel of a bundle built before they were, is absent)."""
        stored = self.manifest.abstention or {}
        return {c: float(stored[c]) for c in ("text", "image", "bm25") if isinstance(stored.get(c), (int, float))}

    def set_fusion(self, calibration: dict[str, dict[str, float]]) -> None:
        """Keep calibrated fusion (`rag.fusion.calibrate_fusion`): per query kind, channel weights plus their
        val figures. A kind whose grid point did not beat the defaults keeps following the corpus's defaults
        (they change as `index add` changes the channels' reliability); its figures are still recorded."""
        self.manifest.fusion = {kind: {c: w for c, w in ws.items() if c in CHANNELS}
                                for kind, ws in calibration.items() if ws.get("calibrated", 1.0)}
        self.manifest.fusion_calibration = calibration

    def record_history(self, op: str, **details: Any) -> None:
        """Note an operation ("add", "remove") in the manifest's history, with the time."""
        if self.manifest.history is None:
            self.manifest.history = []
        self.manifest.history.append({"op": op, **details, "at": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def set_search_params(self, overrides: dict[str, int]) -> None:
        """Query-time nprobe / ef_search instead of the values stored at build time."""
        self.search_params.update(check_search_params(overrides))

    def use_gpu(self) -> bool:
        """Search on the GPU(s) where faiss-gpu and a GPU are present; True if any channel moved."""
        return any([index.to_gpu() for index in self.vectors.values()])


def channel_files(domain: str, channel: str, shards: int) -> list[str]:
    """Bundle-relative FAISS files of one domain-channel (one name per shard)."""
    if shards == 1:
        return [f"{domain}/{channel}.faiss"]
    return [f"{domain}/{channel}.{s:02d}.faiss" for s in range(shards)]


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
    name = pointer.read_bytes().decode("utf-8", errors="replace").strip()
    # Only a version folder of this bundle: a damaged or hand-written pointer must not lead elsewhere.
    version = bundle_dir / name
    if not name.startswith("v-") or "/" in name or not (version / "manifest.json").is_file():
        raise BundleError(f"{bundle_dir}: {POINTER} points at {name!r}, which is not a version folder with a "
                          f"manifest.json; the bundle is damaged: rebuild it with `medrag index build`")
    return version


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """The live version's manifest.json as stored (plain JSON); `load_manifest` gives it typed."""
    return _read_manifest_at(resolve_version(bundle_dir))


def load_manifest(bundle_dir: str | Path) -> Manifest:
    """The live version's manifest, typed (without loading or checking the rest of the bundle)."""
    version = resolve_version(bundle_dir)
    return Manifest.from_json(_read_manifest_at(version), f"{version}/manifest.json")


def _read_manifest_at(version: Path) -> dict[str, Any]:
    # Read from the version folder already resolved: resolving CURRENT a second time could land on a
    # newer version swapped in meanwhile, pairing one version's manifest with another's files.
    try:
        data = json.loads((version / "manifest.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{version}/manifest.json is damaged ({exc}); rebuild the index with `medrag index build`") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{version}/manifest.json is damaged (not a JSON object); rebuild the index with "
                          f"`medrag index build`")
    return data


def verify_files(version: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems with the bundle's files against the manifest checksums (empty list = intact).

    Works on the stored JSON, before it is parsed, so that damage is reported as damage.
    """
    problems = []
    digest = version / MANIFEST_DIGEST
    if digest.is_file() and digest.read_bytes().strip() != _sha256(version / "manifest.json").encode():
        problems.append("checksum mismatch in manifest.json (the file was changed or damaged)")
    if not manifest.get("files"):
        problems.append("the manifest lists no files to check")
    for rel, expected in manifest.get("files", {}).items():
        path = version / rel
        if not path.is_file():
            problems.append(f"missing file {rel}")
        elif _sha256(path) != expected:
            problems.append(f"checksum mismatch in {rel} (the file was changed or damaged)")
    return problems


def load_bundle(bundle_dir: str | Path, verify: bool = True) -> IndexBundle:
    version = resolve_version(bundle_dir)
    stored = _read_manifest_at(version)
    check_format(stored, version)
    if verify:
        problems = verify_files(version, stored)
        if problems:
            raise BundleError(f"index {bundle_dir} is damaged: {'; '.join(problems)}. Rebuild it with "
                              f"`medrag index build`, or check it with `medrag index verify {bundle_dir}`")
    manifest = Manifest.from_json(stored, f"{version}/manifest.json")
    docs: dict[int, Document] = {}
    with open(version / "docs.jsonl", encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            number = record.pop("num")
            docs[number] = Document(**record)
    image_owner = {int(k): v for k, v in json.loads((version / "images.json").read_text()).items()}
    built = manifest.vector_index or VectorIndexInfo(VectorIndexConfig())  # format 1: exact, unsharded
    vectors = {}
    for domain in manifest.domains:
        for channel in VECTOR_CHANNELS:
            paths = [version / rel for rel in channel_files(domain, channel, built.config.shards)]
            if all(p.is_file() for p in paths):
                vectors[(domain, channel)] = ChannelIndex([faiss.read_index(str(p)) for p in paths],
                                                          built.note(domain, channel))
    dims = manifest.dims
    router = DomainRouter(dims.image, dims.text, len(manifest.domains))
    aligner = Aligner(dims.image, dims.text, dims.joint)
    weights = load_file(str(version / "heads.safetensors"))
    router.load_state_dict({k.removeprefix("router."): v for k, v in weights.items() if k.startswith("router.")})
    aligner.load_state_dict({k.removeprefix("aligner."): v for k, v in weights.items() if k.startswith("aligner.")})
    router.eval()
    aligner.eval()
    whitening = ImageWhitening.from_state({k.removeprefix("whitening."): v for k, v in weights.items()
                                           if k.startswith("whitening.")}, dims.image)
    return IndexBundle(manifest=manifest, docs=docs, image_owner=image_owner, vectors=vectors,
                       lexical=LexicalIndex.load(version / "lexical"), router=router, aligner=aligner,
                       selection=manifest.selection, root=version, vector_config=built.config, whitening=whitening)


def verify_bundle(bundle_dir: str | Path, encoders: bool = True) -> list[str]:
    """Every problem found with a bundle, each saying what is wrong (empty list: the bundle is sound).

    Checks the pointer, the manifest and its format version, every file against its checksum (and
    that no file was added), then loads the bundle and checks that every FAISS index reads and holds
    one vector per document (text, joint) or image (image) of its domain, that the document store,
    image table and lexical rows agree with each other and with the manifest's counts, and, with
    `encoders`, that the encoders named in the manifest load here with the fingerprints the bundle
    was built with (queries are refused otherwise).
    """
    try:
        version = resolve_version(bundle_dir)
        stored = _read_manifest_at(version)  # plain JSON: the files are checked before it is parsed
        check_format(stored, version)
    except BundleError as exc:
        return [str(exc)]
    problems = verify_files(version, stored)
    if not (version / MANIFEST_DIGEST).is_file():
        # Loading accepts this (bundles written before the manifest had its own checksum lack it).
        problems.append(f"missing file {MANIFEST_DIGEST}: the manifest itself cannot be checked; rebuild the index "
                        f"with `medrag index build` to add it")
    known = {*stored.get("files", {}), "manifest.json", MANIFEST_DIGEST}
    problems += [f"unexpected file {rel} (not in the manifest; a version folder is never changed after it is written)"
                 for rel in sorted(str(p.relative_to(version)) for p in version.rglob("*") if p.is_file())
                 if rel not in known]
    if problems:
        return problems  # loading damaged files would only report the same damage again, less clearly
    try:
        bundle = load_bundle(bundle_dir, verify=False)
    except Exception as exc:  # whatever a loader raises on these files, it is the answer to "is it sound?"
        return [f"the bundle does not load: {type(exc).__name__}: {exc}"]
    if bundle.root != version:
        return [f"{bundle_dir} changed to {bundle.root.name} while it was being verified; run the check again"]
    if bundle.manifest.counts != _counts(bundle):
        problems.append(f"the manifest's counts {bundle.manifest.counts} do not match the files {_counts(bundle)}")
    owners = set(bundle.image_owner.values())
    if not owners <= set(bundle.docs):
        problems.append(f"images belong to document numbers not in docs.jsonl: {sorted(owners - set(bundle.docs))[:10]}")
    for (domain, channel), index in sorted(bundle.vectors.items()):
        in_domain = {n for n, d in bundle.docs.items() if d.domain == domain}
        expected = (sum(1 for n in bundle.image_owner.values() if n in in_domain) if channel == "image"
                    else len(in_domain))
        if index.ntotal != expected:
            problems.append(f"{domain}/{channel}.faiss holds {index.ntotal} vectors, the bundle has {expected} "
                            f"{'images' if channel == 'image' else 'documents'} in {domain}")
        if channel in ("text", "image") and index.d != bundle.channel_dim(channel):
            problems.append(f"{domain}/{channel}.faiss has dimension {index.d}, the {channel} encoder "
                            f"{bundle.channel_dim(channel)}")
    live = set(bundle.lexical.live_rows().tolist())
    if live != set(bundle.docs):
        problems.append(f"the lexical index has {len(live)} live rows, docs.jsonl {len(bundle.docs)} documents, "
                        f"and they are not the same numbers")
    if encoders:
        problems += _encoder_problems(bundle.manifest)
    return problems


def _encoder_problems(manifest: Manifest) -> list[str]:
    from rag.encoders import create_image_encoder, create_text_encoder

    problems = []
    for role, create in (("text", create_text_encoder), ("image", create_image_encoder)):
        built = manifest.encoders[role]
        try:
            fingerprint = create(built.name).fingerprint
        except Exception as exc:  # not installed, not downloadable offline, unknown name: all say the same
            problems.append(f"the {role} encoder '{built.name}' cannot be loaded here ({type(exc).__name__}: "
                            f"{exc}); queries need it (skip this check with --no-encoders)")
            continue
        if fingerprint != built.fingerprint:
            problems.append(f"the {role} encoder '{built.name}' installed here has fingerprint {fingerprint}, "
                            f"the bundle was built with {built.fingerprint}: reinstall the same weights or "
                            f"rebuild the index with `medrag index build`")
    return problems


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
            # the CPU shards are written (GPU copies are for searching only)
            for shard, rel in zip(index.shards, channel_files(domain, channel, len(index.shards)), strict=True):
                faiss.write_index(shard, str(staging / rel))
        bundle.lexical.save(staging / "lexical")
        weights = {f"router.{k}": v.contiguous() for k, v in bundle.router.state_dict().items()}
        weights.update({f"aligner.{k}": v.contiguous() for k, v in bundle.aligner.state_dict().items()})
        if bundle.whitening.fitted:
            weights.update({f"whitening.{k}": v.contiguous() for k, v in bundle.whitening.state_dict().items()})
        save_file(weights, str(staging / "heads.safetensors"))
        manifest = replace(bundle.manifest, format_version=FORMAT_VERSION, selection=bundle.selection,
                           counts=_counts(bundle), vector_index=VectorIndexInfo(bundle.vector_config, {
                               f"{domain}/{channel}": index.describe()
                               for (domain, channel), index in sorted(bundle.vectors.items())}),
                           files={str(p.relative_to(staging)): _sha256(p)
                                  for p in sorted(staging.rglob("*")) if p.is_file()})
        (staging / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=2, ensure_ascii=False))
        (staging / MANIFEST_DIGEST).write_text(_sha256(staging / "manifest.json") + "\n")
        _fsync_tree(staging)
        with _writer_lock(bundle_dir):
            previous = _live_version(bundle_dir)
            os.replace(staging, final)
            _write_pointer(bundle_dir, final.name)
            bundle.manifest, bundle.root = manifest, final
            _prune(bundle_dir, keep_versions, previous)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _counts(bundle: IndexBundle) -> dict[str, Any]:
    per_domain: dict[str, dict[str, int]] = {}
    for domain in bundle.domains:
        per_domain[domain] = {"documents": sum(1 for d in bundle.docs.values() if d.domain == domain)}
        for channel in VECTOR_CHANNELS:
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


@contextmanager
def _writer_lock(bundle_dir: Path, name: str = LOCK) -> Iterator[None]:
    """Exclusive among writers of one bundle (readers never lock); released by the OS if the holder dies."""
    with open(bundle_dir / name, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def bundle_update(bundle_dir: str | Path) -> Iterator[None]:
    """Hold while reading a bundle, changing it and saving it (`index add`, `index remove`), so that two
    updates run one after the other: each starts from the version the previous one saved, and neither
    addition is lost. A lock of its own: `save_bundle` takes the swap lock inside it."""
    bundle_dir = Path(bundle_dir)
    resolve_version(bundle_dir)  # a clear error for a missing bundle, before any lock file is created
    with _writer_lock(bundle_dir, UPDATE_LOCK):
        yield


def _live_version(bundle_dir: Path) -> str | None:
    pointer = bundle_dir / POINTER
    return pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None


def _writer_alive(name: str) -> bool:
    """Whether the process that named a staging folder `.tmp-v-<stamp>-<pid>` is still running here."""
    try:
        os.kill(int(name.rsplit("-", 1)[1]), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except OSError as exc:  # EPERM: alive, but another user's
        return exc.errno == errno.EPERM
    return True


def _prune(bundle_dir: Path, keep: int, previous: str | None) -> None:
    """Drop old versions and leftovers of killed writers; the live one and its predecessor stay.

    Runs under the writer lock, so no other writer is between renaming its version folder and
    swapping CURRENT: a version that is neither live nor the predecessor (which a reader may still be
    loading) is an old one or the orphan of a writer killed before its swap.
    """
    live = _live_version(bundle_dir)
    others = sorted((p for p in bundle_dir.glob("v-*") if p.is_dir() and p.name not in (live, previous)),
                    reverse=True)
    for path in others[max(0, keep - 2):]:
        shutil.rmtree(path, ignore_errors=True)
    for leftover in bundle_dir.glob(f".{POINTER}.tmp-*"):
        leftover.unlink(missing_ok=True)
    # A staging folder is being written by a live writer (staging happens outside the lock) unless
    # its writer is gone; the age limit covers writers on other hosts of a shared file system.
    for leftover in bundle_dir.glob(".tmp-v-*"):
        if not _writer_alive(leftover.name) or leftover.stat().st_mtime < time.time() - 3600:
            shutil.rmtree(leftover, ignore_errors=True)
