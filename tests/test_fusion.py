"""Score-aware fusion (rag/fusion.py) on hand-made channel rankings: no models, so each rule is checked alone."""

from __future__ import annotations

import numpy as np
import pytest

from rag.corpus import Document
from rag.fusion import (RELIABILITY_POWER, TEXT_WEIGHT_WITH_IMAGE, channel_reliability, default_weights, fuse,
                        standardise)

DOCS = {n: Document(id=f"d{n}", domain="radiology", title=f"doc {n}", text="text") for n in range(40)}


def _flat(order: list[int], top: float = 0.42, step: float = 0.002) -> list[tuple[int, float]]:
    """A channel with no conviction: scores fall evenly, nothing stands out."""
    return [(n, top - i * step) for i, n in enumerate(order)]


def _peaked(gold: int, others: list[int]) -> list[tuple[int, float]]:
    """A channel that found one document far above the rest (a near-duplicate image)."""
    return [(gold, 0.95)] + [(n, 0.55 - i * 0.002) for i, n in enumerate(others)]


def test_a_strong_image_match_is_not_outvoted_by_a_generic_question() -> None:
    rng = np.random.default_rng(0)
    noise = [int(n) for n in rng.permutation(np.arange(1, 40))]
    per_channel = {"text": _flat(noise), "bm25": _flat(noise[::-1], top=0.9, step=0.01),
                   "joint": _flat(noise[5:] + noise[:5]), "image": _peaked(0, noise[:30])}
    hits = fuse(per_channel, default_weights("image+text", {"joint": 0.5, "image": 0.6}), DOCS)
    assert hits[0].doc_number == 0
    # rank-only fusion with equal weights is what lost it: three channels agree on nothing, yet they win
    assert all(h.score > 0 for h in hits) and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_text_channels_decide_text_questions_and_keep_their_raw_scores() -> None:
    per_channel = {"text": [(3, 0.8), (4, 0.5), (5, 0.45)], "bm25": [(3, 20.0), (5, 4.0), (4, 1.0)]}
    hits = fuse(per_channel, default_weights("text"), DOCS)
    assert [h.doc_number for h in hits][:1] == [3]
    assert hits[0].channel_scores == {"text": 0.8, "bm25": 20.0} and hits[0].ranks == {"text": 0, "bm25": 0}


def test_default_weights_follow_the_corpus_reliability_of_the_image_channels() -> None:
    weights = default_weights("image+text", {"joint": 0.4, "image": 0.8})
    assert weights["image"] == 1.0 and weights["joint"] == pytest.approx(0.5 ** RELIABILITY_POWER, abs=1e-4)
    assert weights["text"] == weights["bm25"] == TEXT_WEIGHT_WITH_IMAGE
    assert default_weights("image") == {"joint": 1.0, "image": 1.0}  # nothing measured: equal
    assert default_weights("text") == {"text": 1.0, "bm25": 1.0}


def test_documents_added_after_the_aligner_are_judged_by_their_images_in_the_joint_channel() -> None:
    others = list(range(1, 30))
    per_channel = {"joint": _peaked(5, [n for n in others if n != 5]), "image": _peaked(39, others)}
    weights = {"joint": 2.0, "image": 0.5}  # calibrated before the add: the joint channel leads
    assert fuse(per_channel, weights, DOCS)[0].doc_number == 5
    assert fuse(per_channel, weights, DOCS, unaligned={39})[0].doc_number == 39


def test_a_new_documents_image_match_is_not_tied_by_the_old_document_the_aligner_guesses() -> None:
    # The aligner never saw document 39's images, so for its image it returns old document 5, which
    # is also the image channel's close second; with the joint channel counted the two tie.
    others = [n for n in range(1, 30) if n != 5]
    per_channel = {"joint": _peaked(5, others), "image": [(39, 0.95), (5, 0.90)] + _flat(others, top=0.7, step=0.01),
                   "text": _flat(list(range(1, 40)))}
    weights = {"text": 0.1, "joint": 0.69, "image": 1.0}
    assert fuse(per_channel, weights, DOCS, unaligned={39})[0].doc_number == 39
    assert fuse(per_channel, weights, DOCS)[0].doc_number == 5  # nothing added: the joint channel still counts
    # an image whose best match is an old document keeps the joint channel's say
    per_old = {**per_channel, "image": [(5, 0.95), (39, 0.90)] + _flat(others, top=0.7, step=0.01)}
    hits = fuse(per_old, weights, DOCS, unaligned={39})
    assert hits[0].doc_number == 5 and "joint" in hits[0].ranks


def test_standardise_says_nothing_about_a_list_without_spread() -> None:
    assert standardise([(1, 0.5)]) == ({1: 0.0}, 0.0)
    z, floor = standardise([(1, 30.0)] + [(n, 0.0) for n in range(2, 51)])
    assert z[1] == 6.0 and floor < 0  # clipped (unclipped: 7): one sparse BM25 hit cannot decide alone
    z, _ = standardise([(1, 33.0), (2, 17.0)] + [(n, 5.0 - n / 10) for n in range(3, 51)])
    assert z[1] > 4.0  # a hit that stands far out keeps more strength than any of the rest


def test_channel_reliability_measures_leave_one_out_image_recall() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(10, 16))
    image_doc = np.repeat(np.arange(10), 3)
    images = centres[image_doc] + 0.05 * rng.normal(size=(30, 16))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    assert channel_reliability(images, image_doc, 0.3)["image"] == 1.0
    scrambled = channel_reliability(images, rng.permutation(image_doc), None)
    assert scrambled["image"] < 0.5 and "joint" not in scrambled
    assert "image" not in channel_reliability(images[:10], np.arange(10), 0.3)  # one image per document


def _tiny_bundle(fusion: dict | None = None):
    """A three-document bundle from a manifest as an earlier build wrote it (`fusion`: its calibrated weights)."""
    from rag.heads import Aligner, DomainRouter
    from rag.index_bundle import IndexBundle
    from rag.lexical import LexicalIndex
    from rag.manifest import Manifest
    from rag.selection import SelectionConfig

    encoder = {"name": "e", "dim": 4, "fingerprint": "f"}
    old = {"encoders": {"text": encoder, "image": encoder}, "dims": {"text": 4, "image": 4, "joint": 4},
           "domains": ["radiology"], "spec": {}, "next_doc": 3, "next_image": 0, "routing": {"threshold": 0.5},
           "selection": SelectionConfig().to_json(), **({"fusion": fusion} if fusion else {})}
    manifest = Manifest.from_json(old, "old/manifest.json")
    bundle = IndexBundle(manifest=manifest, docs={n: DOCS[n] for n in range(3)}, image_owner={}, vectors={},
                         lexical=LexicalIndex.build([], []), router=DomainRouter(4, 4, 1), aligner=Aligner(4, 4, 4),
                         selection=SelectionConfig())
    return bundle, old


def test_a_bundle_built_before_keeps_its_weights_and_gets_defaults_for_the_rest() -> None:
    bundle, old = _tiny_bundle({"text": {"text": 0.0, "bm25": 0.5}})
    manifest = bundle.manifest
    assert bundle.fusion_weights("text") == {"text": 0.0, "bm25": 0.5}      # its calibration is kept
    assert bundle.fusion_weights("image") == {"joint": 1.0, "image": 1.0}   # nothing measured: equal
    assert bundle.abstention_thresholds() == {} and bundle.unaligned == set()
    assert manifest.to_json() == old                                          # written back as read
    manifest.aligned_docs = 2                                                 # one document added since
    assert bundle.unaligned == {2}


def _calibration_rows(clear_wins: int, sure: int) -> list[tuple[list[str], np.ndarray, int]]:
    """Val questions over (text, image): `sure` ones every weighting gets right, `clear_wins` ones where a
    confident wrong text match beats the gold's image match unless the image channel leads."""
    channels = ["text", "image"]
    sure_z = np.asarray([[3.0, 3.0], [0.0, 0.0]])             # gold first whatever the weights
    contested = np.asarray([[-1.0, 3.0], [3.5, 0.0]])         # gold's image vs another document's text
    return [(channels, sure_z, 0)] * sure + [(channels, contested, 0)] * clear_wins


def test_calibration_replaces_the_defaults_only_when_val_says_so_beyond_noise() -> None:
    from rag.fusion import _best_weights

    defaults = {"text": 1.0, "image": 1.0}
    clear = _best_weights(_calibration_rows(clear_wins=30, sure=10), defaults)
    assert clear["calibrated"] == 1.0 and clear["image"] > clear["text"]
    assert clear["val_mrr"] == 1.0 and clear["val_mrr_default"] == pytest.approx(0.625)
    # one contested question in forty: the image-led grid point is better on val, but by one question
    noise = _best_weights(_calibration_rows(clear_wins=1, sure=39), defaults)
    assert noise["calibrated"] == 0.0 and {c: noise[c] for c in defaults} == defaults
    assert noise["val_mrr_best"] > noise["val_mrr"] == noise["val_mrr_default"]
    # a kind that kept its defaults is not frozen into the manifest: it follows the corpus's reliability
    bundle, _ = _tiny_bundle()
    bundle.set_fusion({"text": {**clear, "bm25": 0.5}, "image": noise})
    assert bundle.manifest.fusion == {"text": {"text": clear["text"], "image": clear["image"], "bm25": 0.5}}
    assert bundle.manifest.fusion_calibration["image"] is noise
    assert bundle.fusion_weights("image") == {"joint": 1.0, "image": 1.0}   # the defaults, not a frozen copy
