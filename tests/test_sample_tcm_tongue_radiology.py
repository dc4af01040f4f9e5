"""Sample-corpus domains `tcm_tongue` and `radiology`: deterministic cases, well-formed questions whose
facts are in the case text, and images that show one subject per case and tell diagnoses apart."""

from __future__ import annotations

import functools
import json
import re
from types import ModuleType

import numpy as np
import pytest

from sample_corpus import radiology, tcm_tongue
from sample_corpus.domain import IMAGE_SIZE, SampleCase
from sample_corpus.radiology.reports import FINDING_PHRASES

MODULES: dict[str, ModuleType] = {"tcm_tongue": tcm_tongue, "radiology": radiology}
EXPECTED_CASES = {"tcm_tongue": 24, "radiology": 40}
# (a case, another case with a different diagnosis, another patient with the same diagnosis)
CONTRASTS = {
    "tcm_tongue": ("normal_1", "lgb_damp_heat_1", "normal_2"),
    "radiology": ("normal_1", "effusion_3", "normal_2"),
}


@functools.cache
def _cases(domain: str) -> tuple[SampleCase, ...]:
    return tuple(MODULES[domain].GENERATOR.cases(np.random.default_rng(0)))


def _case(domain: str, key: str) -> SampleCase:
    return next(c for c in _cases(domain) if c.key == key)


def _draw(domain: str, case: SampleCase, seed: int) -> np.ndarray:
    return np.asarray(MODULES[domain].GENERATOR.draw(case, np.random.default_rng(seed)))


@pytest.fixture(params=list(MODULES))
def domain(request: pytest.FixtureRequest) -> str:
    return request.param


def test_domain_counts_and_keys(domain: str) -> None:
    cases = _cases(domain)
    assert MODULES[domain].GENERATOR.domain == domain
    assert len(cases) == EXPECTED_CASES[domain]
    keys = [c.key for c in cases]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"[a-z0-9_]+", k) for k in keys)
    for case in cases:
        assert len(case.questions) >= 9, case.key
        assert 80 <= len(case.text.split()) <= 250, case.key
        assert case.title and case.source and "medvlm-rag" in case.source
        json.dumps(case.params)
        json.dumps(case.metadata)


def test_cases_are_deterministic(domain: str) -> None:
    generator = MODULES[domain].GENERATOR
    first = generator.cases(np.random.default_rng(7))
    second = generator.cases(np.random.default_rng(7))
    assert first == second
    assert first != generator.cases(np.random.default_rng(8))


def test_draw_is_deterministic_rgb_224(domain: str) -> None:
    generator = MODULES[domain].GENERATOR
    case = _cases(domain)[3]
    image = generator.draw(case, np.random.default_rng(5))
    assert image.mode == "RGB" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert image.tobytes() == generator.draw(case, np.random.default_rng(5)).tobytes()
    assert image.tobytes() != generator.draw(case, np.random.default_rng(6)).tobytes()


def test_questions_are_well_formed(domain: str) -> None:
    cases = _cases(domain)
    handles = [c.metadata["handle"] for c in cases]
    assert len(set(handles)) == len(handles)
    for case in cases:
        handle = case.metadata["handle"]
        # The handle is how text-only questions name the patient, so it must lead to this document only.
        assert [c.key for c in cases if handle.removeprefix("the ") in c.text] == [case.key]
        for q in case.questions:
            assert q.answer in q.options and len(set(q.options)) == len(q.options), q
            assert q.topic
            if q.kind == "yes_no":
                assert q.options == ["yes", "no"]
            else:
                assert q.kind == "multiple_choice" and len(q.options) == 4
            if q.uses_image:
                assert "this" in q.question and handle not in q.question
            else:
                assert handle in q.question


def test_answers_balanced(domain: str) -> None:
    questions = [q for c in _cases(domain) for q in c.questions]
    yes_no = [q for q in questions if q.kind == "yes_no"]
    assert 0.35 <= sum(q.answer == "yes" for q in yes_no) / len(yes_no) <= 0.65
    assert 0.35 <= sum(q.uses_image for q in questions) / len(questions) <= 0.65
    # The correct option is not always in the same slot.
    slots = {q.options.index(q.answer) for q in questions if q.kind == "multiple_choice"}
    assert slots == {0, 1, 2, 3}


def _yes_no_truth_from_text(domain: str, topic: str, question: str, text: str) -> bool | None:
    """What the case text says about a yes/no question, or None where the text cannot be checked."""
    if "a herbal formula" in question:
        return tcm_tongue.NO_FORMULA not in text
    asked = re.search(r"recommend (.+)\?$", question) or re.search(r"^Was (.+) prescribed for", question)
    if topic in ("follow_up", "formula") and asked:
        return asked.group(1) in text
    if domain == "tcm_tongue":
        colour = re.search(r"tongue body in this image (\S+)\?", question)
        signs = {"teeth_marks": "teeth marks: present", "swollen": "body shape: swollen",
                 "thin": "body shape: thin"}
        if topic == "body_colour" and colour:
            return f"body colour: {colour.group(1)};" in text
        if topic in signs:
            return signs[topic] in text
        if topic == "cracks":
            return "cracks: none" not in text
        if topic == "red_points":
            return "red points: absent" not in text
        return None
    impression = text.split("Impression:")[1]
    side = re.search(r"(right|left)", question)
    checks = {
        "air_bronchograms": "Air bronchograms are visible" in text,
        "associated_finding": "There is upper lobe venous diversion" in text,
        "size": "Large" in impression,
        "ctr": float(re.search(r"cardiothoracic ratio (?:of )?(\d\.\d\d)", text).group(1)) > 0.5,
        "costophrenic_angles": "both costophrenic angles are sharp" in text,
    }
    if topic == "laterality" and side:
        return f"{side.group(1)} " in impression
    if topic == "diagnosis":
        finding = next((d for d, phrase in FINDING_PHRASES.items() if phrase in question), None)
        return (finding or "normal chest radiograph") in impression.lower()
    return checks.get(topic)


def test_every_fact_asked_is_in_the_text(domain: str) -> None:
    unchecked = 0
    for case in _cases(domain):
        for q in case.questions:
            if q.kind == "multiple_choice":
                assert q.answer.lower() in case.text.lower(), (case.key, q.question, q.answer)
                continue
            truth = _yes_no_truth_from_text(domain, q.topic, q.question, case.text)
            if truth is None:
                unchecked += 1
                continue
            assert q.answer == ("yes" if truth else "no"), (case.key, q.question)
    assert unchecked == 0


def test_report_numbers_match_drawing_parameters() -> None:
    for case in _cases("radiology"):
        p = case.params
        assert re.search(rf"cardiothoracic ratio (of )?{p['ctr']:.2f}", case.text)
        assert (p["ctr"] > 0.5) == case.key.startswith("cardiomegaly")
        if "rim_px" in p:
            rim_cm = float(case.metadata["rim"].split()[0])
            assert p["rim_px"] == pytest.approx(rim_cm * p["thorax_half_width"] / 14, abs=0.1)


def _coarse(image: np.ndarray, cells: int = 14) -> np.ndarray:
    """Exposure-normalised 14x14 thumbnail: robust to brightness, contrast and small shifts."""
    a = image.astype(np.float32)
    a = (a - a.mean()) / (a.std() + 1e-6)
    h = a.shape[0] // cells
    return a.reshape(cells, h, cells, h, 3).mean(axis=(1, 3))


def test_images_show_the_case_not_the_acquisition(domain: str) -> None:
    key, other_diagnosis, same_diagnosis = (_case(domain, k) for k in CONTRASTS[domain])

    def mean_view(case: SampleCase, seeds: range) -> np.ndarray:
        return np.mean([_coarse(_draw(domain, case, s)) for s in seeds], axis=0)

    first, second = mean_view(key, range(0, 3)), mean_view(key, range(3, 6))
    within = np.abs(first - second).mean()
    assert np.abs(first - mean_view(other_diagnosis, range(0, 3))).mean() > 2 * within
    assert np.abs(first - mean_view(same_diagnosis, range(0, 3))).mean() > within


def test_radiograph_laterality_follows_pa_convention() -> None:
    """Image left is the patient's right: a large right effusion whitens the image-left base."""
    case = next(c for c in _cases("radiology") if c.params.get("side") and "effusion_height_px" in c.params
                and c.metadata["grade"] == "large")
    image = _draw("radiology", case, 1).astype(np.float32).mean(axis=2)
    base = image[125:185]
    image_left, image_right = base[:, 25:70].mean(), base[:, 154:199].mean()
    assert (image_left > image_right + 15) == (case.params["side"] == "right")
    assert (image_right > image_left + 15) == (case.params["side"] == "left")
