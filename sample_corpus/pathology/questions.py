"""Questions about a pathology specimen: eight every specimen gets, then those only its kind has."""

from __future__ import annotations

import numpy as np

from sample_corpus.domain import QuestionTemplate
from sample_corpus.pathology.specimens import DIAGNOSES, specimen_handle
from sample_corpus.questions import (Scale, either_phrasing, measurement_question, multiple_choice,
                                     presence_question, yes_no)

MALIGNANT = {"colon_adenocarcinoma", "breast_idc", "scc"}

# Microscopic features asked about in yes/no questions, and which diagnoses show them. Features a
# diagnosis may or may not show (necrosis in a carcinoma) are left out of its questions.
FEATURES = ("gland formation", "goblet cells", "keratin pearls", "fat vacuoles",
            "multinucleated giant cells", "neutrophils", "lymphoid follicles", "tumour cell nests",
            "nuclear pleomorphism", "hepatocyte plates", "necrosis")
FEATURES_PRESENT = {
    "normal_colon": {"gland formation", "goblet cells"},
    "normal_liver": {"hepatocyte plates"},
    "lymph_node": {"lymphoid follicles"},
    "colon_adenocarcinoma": {"gland formation", "nuclear pleomorphism"},
    "breast_idc": {"tumour cell nests", "nuclear pleomorphism"},
    "granuloma": {"multinucleated giant cells"},
    "acute_inflammation": {"neutrophils"},
    "necrosis": {"necrosis"},
    "steatosis": {"fat vacuoles", "hepatocyte plates"},
    "scc": {"keratin pearls", "tumour cell nests", "nuclear pleomorphism"},
}
FEATURES_UNCERTAIN = {
    "colon_adenocarcinoma": {"necrosis", "tumour cell nests", "neutrophils", "goblet cells"},
    "breast_idc": {"gland formation", "necrosis"},
    "scc": {"necrosis", "neutrophils"},
    "granuloma": {"necrosis", "lymphoid follicles"},
    "acute_inflammation": {"necrosis", "gland formation", "goblet cells"},
    "necrosis": {"neutrophils"},
    "lymph_node": {"gland formation"},
}

ADENOCARCINOMA_GRADES = ["well differentiated (G1)", "moderately differentiated (G2)", "poorly differentiated (G3)",
                         "undifferentiated (G4)"]
TUMOUR_SIZE_MM = Scale(15, 90, 1, 6, "{:g} mm")
MITOSES = Scale(1, 45, 1, 4)
INVASION_DEPTH_MM = Scale(1.0, 16.0, 0.1, 1.5, "{:.1f} mm")
FAT_PERCENT = Scale(5, 95, 1, 12, "{:g}%")
INTRAEPITHELIAL_LYMPHOCYTES = Scale(2, 40, 1, 5)
NODE_SIZE_MM = Scale(5, 40, 1, 4, "{:g} mm")
ORGAN_LENGTH_MM = Scale(30, 110, 1, 8, "{:g} mm")
NECROSIS_LENGTH_MM = Scale(20, 180, 1, 15, "{:g} mm")


def specimen_questions(rng: np.random.Generator, p: dict, vocabulary: dict[str, list[str]]) -> list[QuestionTemplate]:
    """Questions about one specimen; distractors come from `vocabulary`, the values the whole
    domain uses for sites, specimen types and recommendations."""
    diagnosis, handle = p["diagnosis"], "the " + specimen_handle(p)
    label = DIAGNOSES[diagnosis]
    others = [d for d in DIAGNOSES.values() if d != label]
    present = [f for f in FEATURES if f in FEATURES_PRESENT[diagnosis]]
    absent = [f for f in FEATURES if f not in FEATURES_PRESENT[diagnosis]
              and f not in FEATURES_UNCERTAIN.get(diagnosis, set())]
    img = "this H&E image"
    qs = [
        multiple_choice(rng, f"What is the diagnosis for the tissue in {img}?", label, others,
                        uses_image=True, topic="diagnosis"),
        presence_question(rng, "Does " + img + " show {}?", present, absent, topic="feature_presence"),
        either_phrasing(rng, yes_no(f"Is the lesion in {img} malignant?", diagnosis in MALIGNANT, uses_image=True,
                                    topic="malignancy"),
                        yes_no(f"Is the tissue in {img} benign?", diagnosis not in MALIGNANT, uses_image=True,
                               topic="malignancy")),
        multiple_choice(rng, f"From which site was the specimen in {img} taken?", p["site"], vocabulary["site"],
                        uses_image=True, topic="site"),
        multiple_choice(rng, f"What did the pathologist recommend for the specimen in {img}?", p["follow_up"],
                        vocabulary["follow_up"], uses_image=True, topic="follow_up"),
        multiple_choice(rng, f"What was the diagnosis for {handle}?", label, others, uses_image=False,
                        topic="diagnosis"),
        multiple_choice(rng, f"What type of specimen was received from {handle}?", p["specimen"],
                        vocabulary["specimen"], uses_image=False, topic="specimen"),
        multiple_choice(rng, f"What was recommended in the pathology report for {handle}?", p["follow_up"],
                        vocabulary["follow_up"], uses_image=False, topic="follow_up"),
    ]
    if "margin_involved" in p:
        qs.append(yes_no(f"Were the resection margins involved in {handle}?", bool(p["margin_involved"]),
                         uses_image=False, topic="margin"))
    return qs + _SPECIFIC_QUESTIONS[diagnosis](rng, p, handle)


def _adenocarcinoma(rng: np.random.Generator, p: dict, handle: str) -> list[QuestionTemplate]:
    return [multiple_choice(rng, f"What grade was the tumour of {handle}?", p["grade"], ADENOCARCINOMA_GRADES,
                            uses_image=False, topic="grade"),
            measurement_question(rng, f"What was the tumour size in {handle}?", p["size_mm"], TUMOUR_SIZE_MM)]


def _breast_idc(rng: np.random.Generator, p: dict, handle: str) -> list[QuestionTemplate]:
    grades = [f"Nottingham grade {g}" for g in (1, 2, 3, 4)]
    return [measurement_question(rng, f"How many mitoses per 10 HPF were counted in {handle}?", p["mitoses"], MITOSES),
            multiple_choice(rng, f"What grade was the carcinoma of {handle}?", f"Nottingham grade {p['grade_n']}",
                            grades, uses_image=False, topic="grade")]


def _scc(rng: np.random.Generator, p: dict, handle: str) -> list[QuestionTemplate]:
    return [measurement_question(rng, f"What was the depth of invasion in {handle}?", p["depth_mm"],
                                 INVASION_DEPTH_MM)]


def _steatosis(rng: np.random.Generator, p: dict, handle: str) -> list[QuestionTemplate]:
    return [measurement_question(rng, f"What percentage of hepatocytes contained fat in {handle}?",
                                 p["fat_percent"], FAT_PERCENT),
            multiple_choice(rng, f"What fibrosis stage was reported for {handle}?", f"stage {p['fibrosis']}",
                            [f"stage {s}" for s in range(5)], uses_image=False, topic="grade")]


def _normal_liver(rng: np.random.Generator, p: dict, handle: str) -> list[QuestionTemplate]:
    return [yes_no(f"Was fibrosis reported in the liver of {handle}?", False, uses_image=False, topic="finding"),
            yes_no(f"Was the steatosis under 5% for {handle}?", True, uses_image=False, topic="finding")]


def _normal_colon(rng: np.random.Generator, p: dict, handle: str) -> list[QuestionTemplate]:
    return [measurement_question(rng, f"How many intraepithelial lymphocytes per 100 epithelial cells were counted "
                                      f"in {handle}?", p["iel"], INTRAEPITHELIAL_LYMPHOCYTES),
            yes_no(f"Was the biopsy free of dysplasia in {handle}?", True, uses_image=False, topic="finding")]


def _lymph_node(rng: np.random.Generator, p: dict, handle: str) -> list[QuestionTemplate]:
    return [yes_no(f"Was the lymph node negative for malignancy in {handle}?", True, uses_image=False,
                   topic="finding"),
            measurement_question(rng, f"What size was the lymph node of {handle}?", p["node_size"], NODE_SIZE_MM)]


def _granuloma(rng: np.random.Generator, p: dict, handle: str) -> list[QuestionTemplate]:
    return [yes_no(f"Were acid-fast bacilli seen in {handle}?", bool(p["zn_positive"]), uses_image=False,
                   topic="finding"),
            yes_no(f"Were the granulomas caseating in {handle}?", bool(p["caseating"]), uses_image=False,
                   topic="finding")]


def _acute_inflammation(rng: np.random.Generator, p: dict, handle: str) -> list[QuestionTemplate]:
    return [yes_no(f"Was a perforation reported for {handle}?", bool(p["perforated"]), uses_image=False,
                   topic="finding"),
            measurement_question(rng, f"How long was the {p['site']} of {handle}?", p["length_mm"],
                                 ORGAN_LENGTH_MM)]


def _necrosis(rng: np.random.Generator, p: dict, handle: str) -> list[QuestionTemplate]:
    return [yes_no(f"Were the resection margins viable in {handle}?", bool(p["viable_margins"]),
                   uses_image=False, topic="margin"),
            measurement_question(rng, f"Over what length was necrosis measured in {handle}?", p["necrotic_mm"],
                                 NECROSIS_LENGTH_MM)]


_SPECIFIC_QUESTIONS = {
    "colon_adenocarcinoma": _adenocarcinoma, "breast_idc": _breast_idc, "scc": _scc, "steatosis": _steatosis,
    "normal_liver": _normal_liver, "normal_colon": _normal_colon, "lymph_node": _lymph_node,
    "granuloma": _granuloma, "acute_inflammation": _acute_inflammation, "necrosis": _necrosis,
}
