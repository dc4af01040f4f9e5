"""Build, grow and shrink index bundles (docs/design.md §4).

`build_index` runs, in order: validate the corpus; embed documents and images in batches; train the
router and aligner heads; index the vectors (one FAISS index per domain and channel) and the BM25
channel; calibrate on the QA validation split (`calibrate_bundle`: first the fusion weights per
query kind, from the unfused channel rankings, then the routing threshold and the selection rule,
from full retrievals: search, fuse, route); and write the bundle atomically. `add_documents` /
`remove_documents` change a bundle without re-embedding what is already there or retraining the
heads; they too write a new version and swap it in.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from rag.abstention import calibrate_abstention
from rag.heads import fit_whitening, train_aligner, train_router
from rag.corpus import (DOMAINS, CorpusError, Document, QAItem, format_problems, read_documents, read_qa,
                        ValidationReport, validate_corpus, validate_qa)
from rag.encoders import (DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, ImageEncoder, TextEncoder,
                          create_image_encoder, create_text_encoder)
from rag.fusion import calibrate_fusion, channel_reliability
from rag.index_bundle import IndexBundle, bundle_update, load_bundle, load_manifest, resolve_version, save_bundle
from rag.lexical import LexicalIndex
from rag.manifest import Dims, EncoderInfo, HeadsInfo, Manifest, RoutingInfo
from rag.retriever import Retriever
from rag.selection import SelectionConfig, calibrate
from rag.text import sentences
from rag.vector_index import ChannelIndex, VectorIndexConfig

ENGINES = ("local", "ray")
ROUTER_SENTENCES_PER_DOC = 12


@dataclass
class IndexSpec:
    """What to build and how; read from YAML/JSON spec files (paths relative to the spec file)."""

    corpus: str | None = None
    qa: str | None = None                 # QA set: train questions teach the text router, val calibrates
    out: str | None = None
    text_encoder: str = DEFAULT_TEXT_ENCODER
    image_encoder: str = DEFAULT_IMAGE_ENCODER
    joint_dim: int = 256
    batch_size: int = 32
    seed: int = 0
    k_max: int = 10
    alpha: float = 0.1                    # selection risk target (miss rate of the gold evidence)
    delta: float = 0.1                    # confidence of the binomial test
    generate_sample: bool = False         # create the sample corpus first when `corpus` is missing
    sample_seed: int = 0
    vector_index: VectorIndexConfig = field(default_factory=VectorIndexConfig)  # FAISS type, shards, params

    def __post_init__(self) -> None:
        if isinstance(self.vector_index, dict):
            self.vector_index = VectorIndexConfig.from_json(self.vector_index)

    @classmethod
    def from_file(cls, path: str | Path) -> "IndexSpec":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read index spec {path}: {exc}") from exc
        unknown = set(data) - set(cls.__dataclass_fields__) - {"name", "description"}
        if unknown:
            raise ValueError(f"index spec {path}: unknown field(s) {sorted(unknown)}; "
                             f"known: {sorted(cls.__dataclass_fields__)}")
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "vector_index" in data:
            data["vector_index"] = VectorIndexConfig.from_json(data["vector_index"], f"index spec {path}: vector_index")
        for key in ("corpus", "qa", "out"):
            if data.get(key):
                data[key] = str((path.parent / data[key]).resolve())
        return cls(**data)


@dataclass
class Embedded:
    """Features of a batch of documents, ready to be added to a bundle."""

    docs: list[Document]
    text: np.ndarray                 # (n_docs, text_dim)
    images: np.ndarray               # (n_images, image_dim)
    image_doc: np.ndarray            # (n_images,) position in `docs`
    skipped: list[str] = field(default_factory=list)


def document_text(doc: Document) -> str:
    return f"{doc.title}. {doc.text}" if doc.title else doc.text


def _absolute_images(docs: list[Document], corpus_dir: Path) -> None:
    # The bundle keeps absolute paths so answers and notebooks can show evidence images from anywhere.
    for doc in docs:
        doc.images = [str((corpus_dir / rel).resolve()) for rel in doc.images]


def _stop_on_problems(report: ValidationReport, on_bad_record: str) -> None:
    if on_bad_record not in ("stop", "skip"):
        raise ValueError(f"on_bad_record must be 'stop' or 'skip', got {on_bad_record!r}")
    if report.problems and on_bad_record == "stop":
        raise CorpusError(format_problems(report, limit=50) + "\nfix these lines, or pass --skip-bad to leave them out")


def load_corpus(corpus: str | Path, on_bad_record: str = "stop") -> tuple[list[Document], list[str]]:
    """Read and validate a corpus; `on_bad_record` is "stop" (raise, listing all) or "skip"."""
    corpus = Path(corpus)
    report = validate_corpus(corpus)
    _stop_on_problems(report, on_bad_record)
    docs = read_documents(corpus, skip_invalid=True, report=report)
    _absolute_images(docs, corpus.parent)
    return docs, [str(p) for p in report.problems]


def load_questions(qa: str | Path, doc_ids: set[str], on_bad_record: str = "stop") -> tuple[list[QAItem], list[str]]:
    """The QA file's questions about the documents `doc_ids`, and its problems.

    A malformed line is a problem like a bad corpus record: it stops the build, listed with its line,
    unless `on_bad_record` is "skip" (then it is left out and listed in the manifest). Questions about
    other documents (the `added` split's, say) are left out without complaint."""
    report = validate_qa(qa, check_images=False)
    _stop_on_problems(report, on_bad_record)
    questions = [q for q in read_qa(qa, skip_invalid=True) if q.doc_id in doc_ids]
    return questions, [str(p) for p in report.problems]


def embed(docs: list[Document], text_encoder: TextEncoder, image_encoder: ImageEncoder, batch_size: int = 32,
          progress: bool = True) -> Embedded:
    text = text_encoder.encode([document_text(d) for d in docs], batch_size=64, progress=progress)
    paths, owner = [], []
    for i, doc in enumerate(docs):
        paths.extend(doc.images)
        owner.extend([i] * len(doc.images))
    images = image_encoder.encode(paths, batch_size=batch_size, progress=progress)
    return Embedded(docs=docs, text=text, images=images, image_doc=np.asarray(owner, dtype=np.int64))


def _router_text_samples(emb: Embedded, text_encoder: TextEncoder, questions: list[QAItem],
                         domain_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Text router data: whole documents, some of their sentences, and training questions (the real query form).

    A corpus of one domain has nothing to route, so its sentences are not encoded; long documents
    give at most ROUTER_SENTENCES_PER_DOC sentences (encoding them was much of the build time)."""
    samples, labels = [], []
    for doc in emb.docs if len(domain_index) > 1 else []:
        kept = [s for s in sentences(doc.text) if len(s.split()) >= 4 or len(s) >= 8]
        for sentence in kept[:ROUTER_SENTENCES_PER_DOC]:
            samples.append(sentence)
            labels.append(domain_index[doc.domain])
    for item in questions:
        samples.append(item.question)
        labels.append(domain_index[item.domain])
    features = text_encoder.encode(samples, batch_size=64) if samples else np.zeros((0, emb.text.shape[1]), np.float32)
    x = np.concatenate([emb.text, features])
    y = np.concatenate([[domain_index[d.domain] for d in emb.docs], labels]).astype(np.int64)
    return x.astype(np.float32), y


def _add_to_bundle(bundle: IndexBundle, emb: Embedded, progress: bool = False) -> list[int]:
    """Append embedded documents under fresh stable numbers; returns the numbers."""
    first_doc, first_image = bundle.take_numbers(len(emb.docs), len(emb.images))
    numbers = list(range(first_doc, first_doc + len(emb.docs)))
    image_ids = np.arange(first_image, first_image + len(emb.images), dtype=np.int64)
    joint_text = emb.text if bundle.joint_native else bundle.aligner.project_texts(emb.text)
    whitened = bundle.whitening.apply(emb.images)
    doc_domains = np.asarray([d.domain for d in emb.docs])
    image_domains = doc_domains[emb.image_doc] if len(emb.image_doc) else np.asarray([], dtype=str)
    for domain in bundle.domains:
        rows = np.flatnonzero(doc_domains == domain)
        img_rows = np.flatnonzero(image_domains == domain)
        for channel, vectors, ids in (("text", emb.text[rows], np.asarray(numbers)[rows]),
                                      ("joint", joint_text[rows], np.asarray(numbers)[rows]),
                                      ("image", whitened[img_rows], image_ids[img_rows])):
            if (domain, channel) not in bundle.vectors:
                # an index is created, and trained when its type needs it, on the first vectors it gets
                bundle.vectors[(domain, channel)] = ChannelIndex.build(
                    vectors, ids, bundle.channel_dim(channel), bundle.vector_config, seed=bundle.build_setting("seed"),
                    progress=progress, desc=f"indexing {domain}/{channel}")
            elif len(vectors):
                bundle.vectors[(domain, channel)].add(vectors, ids)
    for number, doc in zip(numbers, emb.docs):
        bundle.docs[number] = doc
    for image_id, position in zip(image_ids, emb.image_doc):
        bundle.image_owner[int(image_id)] = numbers[int(position)]
    bundle.lexical.add([document_text(d) for d in emb.docs], [d.names for d in emb.docs])
    return numbers


def _train_heads(emb: Embedded, questions: list[QAItem], text_encoder: TextEncoder, image_dim: int,
                 spec: IndexSpec, progress: bool) -> tuple[list[str], Any, dict[str, Any], Any, Any]:
    """The domains, the router (with its logs) and the aligner (with its log), trained on `emb`."""
    docs = emb.docs
    domains = [d for d in DOMAINS if any(doc.domain == d for doc in docs)]
    domain_index = {d: i for i, d in enumerate(domains)}
    image_labels = np.asarray([domain_index[docs[i].domain] for i in emb.image_doc], dtype=np.int64)
    text_x, text_y = _router_text_samples(emb, text_encoder, [q for q in questions if q.split == "train"], domain_index)
    image_x = emb.images if len(emb.images) else np.zeros((1, image_dim), np.float32)
    router, router_logs = train_router(image_x, image_labels if len(emb.images) else np.zeros(1, np.int64),
                                       text_x, text_y, len(domains), seed=spec.seed, progress=progress)
    aligner, aligner_log = train_aligner(emb.images, emb.image_doc, emb.text, joint_dim=spec.joint_dim,
                                         seed=spec.seed, progress=progress)
    return domains, router, router_logs, aligner, aligner_log


def build_index(corpus: str | Path, out: str | Path, spec: IndexSpec | None = None, qa: str | Path | None = None,
                on_bad_record: str = "stop", progress: bool = True,
                text_encoder: TextEncoder | None = None, image_encoder: ImageEncoder | None = None,
                engine: str = "local", ray_address: str | None = None, device: str | None = None) -> IndexBundle:
    """Build a bundle from a corpus; an existing bundle at `out` stays live until the new one is complete.

    `engine` embeds the corpus: "local" in this process, "ray" with Ray Data on a Ray cluster
    (`ray_address`, default a local instance); everything after embedding is the same. `device`
    places the encoders (default: CUDA when available).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    spec = spec or IndexSpec()
    started = time.perf_counter()
    docs, skipped = load_corpus(corpus, on_bad_record)
    if not docs:
        raise CorpusError(f"{corpus}: no usable documents to index")
    questions, qa_problems = load_questions(qa, {d.id for d in docs}, on_bad_record) if qa else ([], [])
    skipped = skipped + qa_problems
    text_encoder = text_encoder or create_text_encoder(spec.text_encoder, device)
    image_encoder = image_encoder or create_image_encoder(spec.image_encoder, device)
    # The engine embeds everything that grows with the corpus; the in-process encoders still serve
    # the calibration queries below and give the fingerprints the Ray workers are checked against.
    corpus_text, corpus_image = text_encoder, image_encoder
    if engine == "ray":
        from rag.ray_build import ray_encoders

        corpus_text, corpus_image = ray_encoders(text_encoder, image_encoder, address=ray_address, device=device,
                                                 progress=progress)
    stages: dict[str, float] = {"load": time.perf_counter() - started}

    def lap(stage: str) -> None:  # where build time goes, kept in the manifest
        stages[stage] = round(time.perf_counter() - started - sum(stages.values()), 2)

    emb = embed(docs, corpus_text, corpus_image, spec.batch_size, progress)
    emb.skipped = skipped
    lap("embed")
    domains, router, router_logs, aligner, aligner_log = _train_heads(emb, questions, corpus_text, image_encoder.dim,
                                                                      spec, progress)
    lap("heads")
    whitening = fit_whitening(emb.images, image_encoder.dim)
    whitened = whitening.apply(emb.images)
    joint_native = bool(text_encoder.shares_space_with_images and image_encoder.shares_space_with_images)

    manifest = Manifest(
        encoders={"text": EncoderInfo(text_encoder.name, text_encoder.dim, text_encoder.fingerprint),
                  "image": EncoderInfo(image_encoder.name, image_encoder.dim, image_encoder.fingerprint)},
        dims=Dims(text=text_encoder.dim, image=image_encoder.dim, joint=spec.joint_dim),
        joint_native=joint_native, domains=domains, spec=asdict(spec), corpus=str(Path(corpus).resolve()),
        next_doc=0, next_image=0,
        heads=HeadsInfo(router={k: v.to_json() for k, v in router_logs.items()}, aligner=aligner_log.to_json(),
                        whitening={**whitening.describe(), "images": len(emb.images)}),
        routing=RoutingInfo(threshold=0.5), skipped_records=skipped, engine=engine,
        channel_reliability=channel_reliability(whitened, emb.image_doc,
                                                aligner_log.val_metric if aligner_log.n_train else None,
                                                seed=spec.seed))
    bundle = IndexBundle(manifest=manifest, docs={}, image_owner={}, vectors={},
                         lexical=LexicalIndex.build([], []), router=router, aligner=aligner,
                         selection=SelectionConfig(k_max=spec.k_max, alpha=spec.alpha, delta=spec.delta),
                         vector_config=spec.vector_index, whitening=whitening)
    _add_to_bundle(bundle, emb, progress)
    manifest.aligned_docs = manifest.next_doc
    lap("index")

    val = [q for q in questions if q.split == "val"]
    retriever = Retriever(bundle, text_encoder, image_encoder)
    manifest.abstention = calibrate_abstention(retriever, whitened, emb.image_doc, seed=spec.seed)
    lap("abstention")
    calibrate_bundle(retriever, val, corpus_dir=Path(corpus).parent, qa_dir=Path(qa).parent if qa else None,
                     spec=spec, progress=progress)
    lap("calibration")
    manifest.build_seconds = round(time.perf_counter() - started, 2)
    manifest.build_stages = {k: round(v, 2) for k, v in stages.items()}
    save_bundle(bundle, out)
    return bundle


def calibrate_bundle(retriever: Retriever, val: list[QAItem], corpus_dir: Path, qa_dir: Path | None,
                     spec: IndexSpec, progress: bool = True) -> None:
    """Calibrate fusion weights, then the routing threshold and the selection rules, on validation questions.

    Fusion first (`rag.fusion.calibrate_fusion`), since the retrievals that calibrate the rest fuse
    with its weights and route on the fused hits.

    Routing threshold: the highest router confidence seen on a misrouted validation question, so
    that questions the router got wrong with that much confidence would have searched two domains.
    Selection: RULE's binomial-test calibration of k, and γ / ρ under the same risk target.
    """
    bundle = retriever.bundle
    if not val:
        # Nothing to calibrate on: keep everything retrieved (fixed k = k_max) and say so.
        bundle.selection = SelectionConfig(rule="fixed", k=spec.k_max, k_max=spec.k_max, alpha=spec.alpha,
                                           delta=spec.delta, calibration={"n": 0, "note": "no val questions"})
        bundle.manifest.routing = RoutingInfo(threshold=0.5, calibrated_on=0)
        return
    bundle.set_fusion(calibrate_fusion(retriever, val, qa_dir, progress=progress))
    wrong_confidences, ranked_scores, gold_ranks = [], [], []
    number_of = {d.id: n for n, d in bundle.docs.items()}
    for item in tqdm(val, desc="calibrating routing and selection", disable=not progress, unit="q"):
        image = str(qa_dir / item.image) if item.image and qa_dir else None
        result = retriever.retrieve(item.question, image=image, k=spec.k_max + 1)
        if result.routing.domain != item.domain:
            wrong_confidences.append(result.routing.confidence)
        ranked_scores.append([h.score for h in result.hits])
        gold = number_of.get(item.doc_id)
        ranks = [i for i, h in enumerate(result.hits) if h.doc_number == gold]
        gold_ranks.append(ranks[0] if ranks else None)
    threshold = min(0.99, max(wrong_confidences) + 1e-3) if wrong_confidences else 0.5
    bundle.manifest.routing = RoutingInfo(threshold=round(float(threshold), 4), calibrated_on=len(val),
                                          val_routing_accuracy=round(1 - len(wrong_confidences) / len(val), 4))
    bundle.selection = calibrate(ranked_scores, gold_ranks, alpha=spec.alpha, delta=spec.delta, k_max=spec.k_max)


def add_documents(bundle_dir: str | Path, corpus: str | Path, on_bad_record: str = "stop",
                  progress: bool = True) -> dict[str, Any]:
    """Embed and add the documents of `corpus` to an existing bundle (ids must be new)."""
    docs, skipped = load_corpus(corpus, on_bad_record)  # first: a bad corpus is reported without loading models
    if not docs:
        raise CorpusError(f"{corpus}: no usable documents to add" + (f" ({len(skipped)} bad record(s) skipped)"
                                                                     if skipped else ""))
    with bundle_update(bundle_dir):  # load -> save as one step: a concurrent add cannot be lost
        retriever = Retriever.load(bundle_dir)
        bundle = retriever.bundle
        _check_new_documents(corpus, docs, bundle)
        emb = embed(docs, retriever.text_encoder, retriever.image_encoder, bundle.build_setting("batch_size"),
                    progress)
        numbers = _add_to_bundle(bundle, emb)
        bundle.record_history("add", corpus=str(Path(corpus).resolve()), documents=len(numbers),
                              images=len(emb.images))
        save_bundle(bundle, bundle_dir)
    return {"added": len(numbers), "images": len(emb.images), "skipped_records": skipped,
            "documents_total": len(bundle.docs)}


def _check_new_documents(corpus: str | Path, docs: list[Document], bundle: IndexBundle) -> None:
    """Refuse ids the bundle already has and domains it does not route between."""
    existing = {d.id for d in bundle.docs.values()}
    clashes = [d.id for d in docs if d.id in existing]
    if clashes:
        raise CorpusError(f"{corpus}: {len(clashes)} document id(s) already in the index ({', '.join(clashes[:5])}"
                          f"{', …' if len(clashes) > 5 else ''}); remove them first with `medrag index remove`")
    unknown = sorted({d.domain for d in docs} - set(bundle.domains))
    if unknown:
        raise CorpusError(f"{corpus}: domain(s) {unknown} are not in this index (it routes between {bundle.domains}); "
                          f"rebuild with `medrag index build` to add a domain")


def remove_documents(bundle_dir: str | Path, ids: list[str]) -> dict[str, Any]:
    """Remove documents (and their images) by id; unknown ids are an error, nothing is half-removed."""
    with bundle_update(bundle_dir):
        bundle = load_bundle(bundle_dir)
        number_of = {d.id: n for n, d in bundle.docs.items()}
        missing = [i for i in ids if i not in number_of]
        if missing:
            raise ValueError(f"not in the index: {', '.join(missing[:10])}; see `medrag index info` for its contents")
        numbers = {number_of[i] for i in ids}
        image_ids = [i for i, n in bundle.image_owner.items() if n in numbers]
        for (domain, channel), index in bundle.vectors.items():
            doomed = image_ids if channel == "image" else list(numbers)
            if doomed:
                index.remove(np.asarray(doomed, dtype=np.int64))
        for n in numbers:
            del bundle.docs[n]
        for i in image_ids:
            del bundle.image_owner[i]
        bundle.lexical.remove(sorted(numbers))
        bundle.record_history("remove", ids=ids)
        save_bundle(bundle, bundle_dir)
    return {"removed": len(numbers), "images_removed": len(image_ids), "documents_total": len(bundle.docs)}


def bundle_info(bundle_dir: str | Path) -> dict[str, Any]:
    """What `medrag index info` shows: where the live version is, and its manifest's summary."""
    return {"path": str(Path(bundle_dir).resolve()), "version": resolve_version(bundle_dir).name,
            **load_manifest(bundle_dir).info()}
