"""The herb domain of the sample corpus: monograph data, documents, questions and drawn specimens."""

from __future__ import annotations

import io
import json
import re
import unicodedata

import numpy as np
import pytest

from sample_corpus.domain import IMAGE_SIZE
from sample_corpus.tcm_herb import GENERATOR
from sample_corpus.tcm_herb.monographs import CHANNELS, FLAVOURS, FORMS, NAME_FIELDS, NATURES, TEXTURES, load_herbs

HERBS = load_herbs()
STRING_FIELDS = ("key", "zh", "pinyin", "latin", "en", "category", "nature", "dosage", "source")
LIST_FIELDS = ("flavours", "channels", "actions", "indications", "cautions")


@pytest.fixture(scope="module")
def cases():
    return GENERATOR.cases(np.random.default_rng(0))


def _png(img) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _piece_colours(case, seeds, levels: int = 6, background_share: float = 0.15) -> np.ndarray:
    """Colour histogram of the crude drug in a set of photographs, averaged over the photographs.

    Backgrounds (paper, cloth, tray, plate) change from photograph to photograph by design, so a
    plain mean image mostly compares backgrounds; dropping the colour bins that fill a large share
    of an image (the background) leaves the colours of the pieces.
    """
    total = np.zeros(levels ** 3)
    for seed in seeds:
        pixels = np.asarray(GENERATOR.draw(case, np.random.default_rng(seed))).reshape(-1, 3).astype(int)
        q = pixels * levels // 256
        hist = np.bincount((q[:, 0] * levels + q[:, 1]) * levels + q[:, 2], minlength=levels ** 3) / len(q)
        hist[hist > background_share] = 0
        total += hist / hist.sum()
    return total / len(seeds)


def test_every_record_is_complete_and_well_typed():
    assert len(HERBS) >= 64
    for herb in HERBS:
        for name in STRING_FIELDS:
            assert isinstance(herb[name], str) and herb[name].strip(), (herb["key"], name)
        for name in LIST_FIELDS:
            values = herb[name]
            assert isinstance(values, list) and values, (herb["key"], name)
            assert all(isinstance(v, str) and v.strip() for v in values), (herb["key"], name)
            assert len(set(values)) == len(values), (herb["key"], name)
        assert re.fullmatch(r"[a-z]+", herb["key"])
        folded = unicodedata.normalize("NFKD", herb["pinyin"]).encode("ascii", "ignore").decode()
        assert folded.lower().replace(" ", "") == herb["key"]
        assert re.fullmatch(r"[\u4e00-\u9fff]+", herb["zh"]), herb["zh"]
        assert herb["nature"] in NATURES
        assert set(herb["channels"]) <= set(CHANNELS), herb["channels"]
        for flavour in herb["flavours"]:
            assert flavour.removeprefix("slightly ") in FLAVOURS, flavour
        low, high = re.fullmatch(r"(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?) g", herb["dosage"]).groups()
        assert 0 < float(low) < float(high)

        appearance = herb["appearance"]
        assert appearance["form"] in FORMS
        assert appearance["texture"] in TEXTURES
        for name in ("colour", "secondary_colour"):
            colour = appearance[name]
            assert len(colour) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
        assert isinstance(appearance["description"], str) and len(appearance["description"].split()) >= 5
        assert appearance["size_mm"] > 0 and appearance["aspect"] >= 1 and 0 <= appearance["curl"] <= 1


def test_keys_and_names_are_unique():
    assert len({h["key"] for h in HERBS}) == len(HERBS)
    for field in NAME_FIELDS:  # an alias names exactly one herb, or retrieval by alias is ambiguous
        names = [h[field].lower() for h in HERBS]
        assert len(set(names)) == len(names), field


def test_cases_are_deterministic(cases):
    again = GENERATOR.cases(np.random.default_rng(0))
    assert cases == again
    assert len({c.key for c in cases}) == len(cases) == len(HERBS)
    for case, herb in zip(cases, HERBS):
        assert case.key == herb["key"] and re.fullmatch(r"[a-z0-9_]+", case.key)
        assert case.names == {field: herb[field] for field in NAME_FIELDS}
        assert case.title == f"{herb['pinyin']} ({herb['latin']})"
        json.dumps(case.params)
        json.dumps(case.metadata)


def test_images_are_deterministic_rgb_and_vary_with_the_seed(cases):
    case = cases[0]
    first = GENERATOR.draw(case, np.random.default_rng(5))
    assert first.size == (IMAGE_SIZE, IMAGE_SIZE) and first.mode == "RGB"
    assert _png(first) == _png(GENERATOR.draw(case, np.random.default_rng(5)))
    assert _png(first) != _png(GENERATOR.draw(case, np.random.default_rng(6)))
    for case in cases[::10]:
        img = GENERATOR.draw(case, np.random.default_rng(1))
        assert img.size == (IMAGE_SIZE, IMAGE_SIZE) and img.mode == "RGB"


def test_questions_are_well_formed_and_balanced(cases):
    answers, image_questions, total = [], 0, 0
    for case in cases:
        assert len(case.questions) >= 9
        names = [case.names[f] for f in NAME_FIELDS]
        for q in case.questions:
            total += 1
            assert q.answer in q.options and len(set(q.options)) == len(q.options), q
            if q.kind == "yes_no":
                assert q.options == ["yes", "no"]
                answers.append(q.answer)
            else:
                assert q.kind == "multiple_choice" and len(q.options) == 4
            assert q.topic
            if q.uses_image:
                image_questions += 1
                assert "this image" in q.question
                assert not any(name in q.question for name in names), q.question
            else:
                assert any(name in q.question for name in names), q.question
    assert 0.45 <= answers.count("yes") / len(answers) <= 0.55
    assert 0.35 <= image_questions / total <= 0.65
    positions = [q.options.index(q.answer) for c in cases for q in c.questions if q.kind == "multiple_choice"]
    assert set(positions) == {0, 1, 2, 3}


def test_every_asked_fact_is_in_the_document(cases):
    by_key = {h["key"]: h for h in HERBS}
    for case in cases:
        herb, text = by_key[case.key], case.text
        assert 80 <= len(text.split()) <= 250, (case.key, len(text.split()))
        for field in NAME_FIELDS:
            assert herb[field] in text
        assert herb["appearance"]["description"] in text
        lowered = text.lower()
        for q in case.questions:
            if q.topic in ("identification", "nature", "category", "dosage") and q.kind == "multiple_choice":
                assert q.answer in text, (case.key, q)
            elif q.topic in ("channels", "flavours") and q.kind == "multiple_choice":
                assert all(item in text for item in q.answer.split(", ")), (case.key, q)
            elif q.topic == "cautions":
                assert q.answer.lower() in lowered
            elif q.topic == "channels":  # yes/no about one channel
                channel = re.search(r"enter the (.+) channel\?", q.question).group(1)
                assert (channel in herb["channels"]) == (q.answer == "yes"), q
                assert (channel in text.split("Channels entered: ")[1].split(".")[0]) == (q.answer == "yes")
            elif q.topic == "actions":
                action = re.search(r" used to (.+)\?$", q.question).group(1)
                assert (action in lowered) == (q.answer == "yes"), q
            elif q.topic == "category":
                category = re.search(r"belong to the category (.+)\?$", q.question).group(1)
                assert (category == herb["category"]) == (q.answer == "yes"), q


def test_herbs_look_more_different_than_photographs_of_one_herb(cases):
    by_key = {c.key: c for c in cases}
    # Pairs of different herbs, down to two black root slices (raw rehmannia, figwort root).
    for a, b in (("gouqizi", "fuling"), ("huangbai", "xuanshen"), ("renshen", "gancao"),
                 ("shengdihuang", "xuanshen")):
        reference = _piece_colours(by_key[a], range(0, 8))
        within = np.abs(reference - _piece_colours(by_key[a], range(8, 16))).sum()
        between = np.abs(reference - _piece_colours(by_key[b], range(8, 16))).sum()
        assert between > 1.2 * within, (a, b, between, within)
