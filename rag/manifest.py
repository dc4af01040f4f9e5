"""The index bundle's manifest.json, typed (docs/design.md §4).

`Manifest.from_json` reads the file's content and `Manifest.to_json` writes it back with the same
keys, in the same order; every missing or malformed key is a `BundleError` naming the file and what
to do. The bundle module (`rag.index_bundle`) owns the manifest: other code asks the `IndexBundle`.

    encoders, dims, joint_native, domains, spec, corpus   what was built, from what, with which encoders
    next_doc, next_image                                  the next stable document number / image row
    heads, routing, skipped_records, engine               head training logs, routing threshold, build notes
    fusion, fusion_calibration, build_seconds             calibrated fusion weights per query kind
    channel_reliability, abstention                       corpus-measured defaults: fusion, abstention
    format_version, selection, counts, vector_index,      written by every save (`save_bundle`)
    files
    history                                               add / remove operations since the build
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from rag.selection import SelectionConfig
from rag.vector_index import VectorIndexConfig

# Format 2 added approximate and sharded vector indexes (manifest "vector_index"). Format 1 bundles
# hold exact, unsharded indexes under the same file names, so they load as such.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


class BundleError(RuntimeError):
    """A bundle cannot be used; the message says what is wrong and what to do."""


def _malformed(where: str, problem: str) -> BundleError:
    return BundleError(f"{where}: {problem}; the manifest is damaged or was written by an incompatible version "
                       f"of medvlm-rag: rebuild the index with `medrag index build`")


def _take(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, required: bool = True) -> Any:
    """`data[key]`, checked to be of `kind` (bool is not a number here); None when absent and not required."""
    if key not in data:
        if required:
            raise _malformed(where, f"the key {key!r} is missing")
        return None
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join({int: "an integer", float: "a number", str: "a string", bool: "true or false",
                             dict: "an object", list: "a list"}[k] for k in kinds if not (k is int and float in kinds))
        raise _malformed(where, f"{key!r} should be {names}, not {json.dumps(value)[:80]}")
    return value


def _typed(where: str, build: Callable[[], Any]) -> Any:
    """Run a config's own constructor, its complaints (TypeError, ValueError) becoming a BundleError."""
    try:
        return build()
    except (TypeError, ValueError) as exc:
        raise _malformed(where, str(exc)) from exc


@dataclass
class EncoderInfo:
    """An encoder a bundle was built with: queries need one with the same fingerprint."""

    name: str
    dim: int
    fingerprint: str

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> EncoderInfo:
        return cls(_take(data, "name", str, where), _take(data, "dim", int, where),
                   _take(data, "fingerprint", str, where))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Dims:
    """Feature dimensions: text and image encoders, and the aligner's joint space."""

    text: int
    image: int
    joint: int

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> Dims:
        return cls(*(_take(data, key, int, where) for key in ("text", "image", "joint")))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RoutingInfo:
    """The soft-routing threshold: below it the top two domains are searched (calibrated on val)."""

    threshold: float = 0.5
    calibrated_on: int | None = None           # val questions (0: none; absent: never calibrated)
    val_routing_accuracy: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> RoutingInfo:
        return cls(_take(data, "threshold", (int, float), where), _take(data, "calibrated_on", int, where, False),
                   _take(data, "val_routing_accuracy", (int, float), where, False))

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class HeadsInfo:
    """Training logs of the heads (`TrainLog.to_json`): the router's per modality, and the aligner's;
    and what the image whitening was fitted on (`ImageWhitening.describe`, absent in older bundles)."""

    router: dict[str, dict[str, Any]]
    aligner: dict[str, Any]
    whitening: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> HeadsInfo:
        router, aligner = _take(data, "router", dict, where), _take(data, "aligner", dict, where)
        for name in router:
            _take(_take(router, name, dict, f"{where}.router"), "val_metric", (int, float), f"{where}.router.{name}")
        _take(aligner, "val_metric", (int, float), f"{where}.aligner")
        return cls(router, aligner, data.get("whitening"))

    def to_json(self) -> dict[str, Any]:
        return {"router": self.router, "aligner": self.aligner,
                **({"whitening": self.whitening} if self.whitening is not None else {})}


@dataclass
class VectorIndexInfo:
    """How the vectors are indexed (the build's config) and what each domain-channel index turned out to be."""

    config: VectorIndexConfig
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)  # "domain/channel" -> ChannelIndex.describe()

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> VectorIndexInfo:
        """`where` is the manifest file: the config's own messages start with "vector_index"."""
        config = _typed(where, lambda: VectorIndexConfig.from_json(data, "vector_index"))
        return cls(config, _take(data, "channels", dict, f"{where}: vector_index", False) or {})

    def to_json(self) -> dict[str, Any]:
        return {**self.config.to_json(), "channels": self.channels}

    def note(self, domain: str, channel: str) -> str | None:
        return self.channels.get(f"{domain}/{channel}", {}).get("note")


# Optional top-level keys kept as plain JSON values: key -> its JSON type.
_PLAIN = {"joint_native": bool, "corpus": str, "skipped_records": list, "engine": str, "fusion": dict,
          "fusion_calibration": dict, "channel_reliability": dict, "abstention": dict, "aligned_docs": int,
          "build_seconds": (int, float), "build_stages": dict, "format_version": int, "counts": dict,
          "files": dict, "history": list}


@dataclass(kw_only=True)
class Manifest:
    """manifest.json, typed. Fields are in the file's key order; None means the key is absent.

    The build writes the first group; `save_bundle` adds format_version, selection, counts,
    vector_index and files; add/remove append to history. Keys this version does not know are kept
    (`extra`) and written back unchanged.
    """

    encoders: dict[str, EncoderInfo]             # "text", "image"
    dims: Dims
    joint_native: bool | None = None             # the joint channel uses the encoders' shared space (CLIP)
    domains: list[str]
    spec: dict[str, Any]                         # the IndexSpec it was built from (`dataclasses.asdict`)
    corpus: str | None = None
    next_doc: int                                # the next stable document number
    next_image: int                              # the next stable image row
    heads: HeadsInfo | None = None
    routing: RoutingInfo = field(default_factory=RoutingInfo)
    skipped_records: list[str] | None = None     # bad corpus records left out at build time
    engine: str | None = None                    # what embedded the corpus: "local" or "ray"
    fusion: dict[str, dict[str, float]] | None = None              # query kind -> channel -> RRF weight
    fusion_calibration: dict[str, dict[str, float]] | None = None  # the same with val_mrr and n
    channel_reliability: dict[str, Any] | None = None  # image channels' recall@1 on held-out corpus images
    abstention: dict[str, Any] | None = None   # build-time thresholds per channel (`rag.abstention`)
    aligned_docs: int | None = None            # documents numbered below this trained the aligner
    build_seconds: float | None = None
    build_stages: dict[str, float] | None = None  # seconds per build stage (embed, heads, index, …)
    format_version: int | None = None
    selection: SelectionConfig | None = None
    counts: dict[str, Any] | None = None
    vector_index: VectorIndexInfo | None = None  # absent in format 1: exact, unsharded indexes
    files: dict[str, str] | None = None          # bundle-relative path -> sha256
    history: list[dict[str, Any]] | None = None  # add / remove operations since the build
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, where: str) -> Manifest:
        """Parse manifest.json's content; `where` (the file) and the remedy are in every error."""
        if not isinstance(data, dict):
            raise _malformed(where, "it is not a JSON object")
        encoders = _take(data, "encoders", dict, where)
        domains = _take(data, "domains", list, where)
        if not all(isinstance(d, str) for d in domains):
            raise _malformed(where, f"'domains' should be a list of names, not {json.dumps(domains)[:80]}")
        heads, vector_index = _take(data, "heads", dict, where, False), _take(data, "vector_index", dict, where, False)
        return cls(
            encoders={role: EncoderInfo.from_json(_take(encoders, role, dict, f"{where}: encoders"),
                                                  f"{where}: encoders.{role}") for role in ("text", "image")},
            dims=Dims.from_json(_take(data, "dims", dict, where), f"{where}: dims"),
            domains=domains, spec=_take(data, "spec", dict, where),
            next_doc=_take(data, "next_doc", int, where), next_image=_take(data, "next_image", int, where),
            heads=None if heads is None else HeadsInfo.from_json(heads, f"{where}: heads"),
            routing=RoutingInfo.from_json(_take(data, "routing", dict, where), f"{where}: routing"),
            selection=_typed(f"{where}: selection",
                             lambda: SelectionConfig.from_json(_take(data, "selection", dict, where))),
            vector_index=None if vector_index is None else VectorIndexInfo.from_json(vector_index, where),
            extra={k: v for k, v in data.items() if k not in {f.name for f in fields(cls)}},
            **{key: _take(data, key, kind, where, False) for key, kind in _PLAIN.items()})

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to manifest.json (absent stays absent)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data["encoders"] = {role: info.to_json() for role, info in self.encoders.items()}
        for key in ("dims", "heads", "routing", "selection", "vector_index"):
            data[key] = None if data[key] is None else data[key].to_json()
        return {**{k: v for k, v in data.items() if v is not None}, **self.extra}

    def info(self) -> dict[str, Any]:
        """What `medrag index info` shows of the manifest."""
        heads = self.heads or HeadsInfo({}, {})
        return {"format_version": self.format_version,
                "encoders": {role: info.to_json() for role, info in self.encoders.items()},
                "domains": self.domains, "counts": self.counts, "routing": self.routing.to_json(),
                "selection": None if self.selection is None else self.selection.to_json(),
                "heads": {"router_val_accuracy": {k: v["val_metric"] for k, v in heads.router.items()},
                          "aligner_val_recall_at_1": heads.aligner.get("val_metric"),
                          "image_whitening": heads.whitening},
                "build_seconds": self.build_seconds, "history": self.history or [],
                "vector_index": self.vector_index.to_json() if self.vector_index else {"type": "flat", "shards": 1}}


def check_format(data: dict[str, Any], where: Any) -> None:
    """Refuse a manifest of a format this version cannot read (checked before anything else is parsed)."""
    version = data.get("format_version")
    if version not in READABLE_FORMATS:
        raise BundleError(f"{where} has bundle format version {version}, this medvlm-rag reads versions "
                          f"{', '.join(map(str, READABLE_FORMATS))}: rebuild it with `medrag index build` "
                          f"(same corpus, same spec)")
