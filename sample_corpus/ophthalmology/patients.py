"""Ophthalmology patients: their retina, history, findings and recommended follow-up.

Thirty synthetic patients: normal fundi; diabetic retinopathy at every level of the International
Clinical Diabetic Retinopathy (ICDR) scale, with or without diabetic macular oedema (DME);
glaucomatous optic disc cupping; and papilledema graded on the Frisén scale. Each patient has a
fixed retina (pigmentation, choroidal texture, disc size and position, a vessel tree grown from
their own seed, lesions at fixed places), stored as drawing parameters with the case facts.

Geometry is kept in a canonical frame centred on the camera field, in pixels of the 224-pixel
image, with +x pointing temporally (towards the macula) and +y inferiorly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sample_corpus.ophthalmology.retina import FIELD_R
from sample_corpus.questions import patient_handle

DIAGNOSES = {
    "normal": "Normal fundus",
    "mild": "Mild non-proliferative diabetic retinopathy",
    "moderate": "Moderate non-proliferative diabetic retinopathy",
    "severe": "Severe non-proliferative diabetic retinopathy",
    "proliferative": "Proliferative diabetic retinopathy",
    "glaucoma": "Glaucomatous optic disc cupping",
    "papilledema": "Papilledema",
}
ICDR_GRADE = {"normal": 0, "mild": 1, "moderate": 2, "severe": 3, "proliferative": 4}
# How many patients of each diagnosis the corpus holds (30 in all).
CASE_COUNTS = {"normal": 5, "mild": 4, "moderate": 4, "severe": 4, "proliferative": 4,
               "glaucoma": 5, "papilledema": 4}

# Lesion names as they are written in reports and asked about in yes/no questions.
LESIONS = ("microaneurysms", "dot-blot haemorrhages", "hard exudates", "cotton-wool spots",
           "neovascularisation", "optic disc swelling", "peripapillary flame haemorrhages",
           "preretinal haemorrhage", "venous beading", "a disc haemorrhage")

SNELLEN = ("6/5", "6/6", "6/9", "6/12", "6/18", "6/24", "6/36", "6/60")


def _scatter(rng: np.random.Generator, n: int, centre: Sequence[float], spread: float,
             avoid: Sequence[tuple[Sequence[float], float]]) -> list[list[float]]:
    """n points around `centre` (Gaussian, sd `spread`) inside the field, outside `avoid` circles."""
    points: list[list[float]] = []
    while len(points) < n:
        x, y = rng.normal(centre, spread, size=2)
        if math.hypot(x, y) > FIELD_R - 8:
            continue
        if any(math.hypot(x - cx, y - cy) < r for (cx, cy), r in avoid):
            continue
        points.append([round(float(x), 1), round(float(y), 1)])
    return points


def _anatomy(rng: np.random.Generator) -> dict:
    """Patient-specific anatomy and colouring shared by every diagnosis."""
    pigment = rng.uniform(0, 1)  # 0: blond, orange fundus; 1: darkly pigmented, brown-red fundus
    retina = np.array([215, 95, 45]) * (1 - pigment) + np.array([165, 70, 40]) * pigment
    retina = retina + rng.normal(0, 8, 3)
    disc_r = float(rng.uniform(10.5, 13.0))
    return {
        "retina_rgb": [round(float(c), 1) for c in np.clip(retina, 60, 250)],
        "vein_rgb": [round(float(c), 1) for c in retina * np.array([0.55, 0.25, 0.35])],
        "artery_rgb": [round(float(c), 1) for c in retina * np.array([0.95, 0.55, 0.6])],
        "disc_rgb": [round(float(c), 1) for c in np.array([235, 150, 105]) + rng.normal(0, 6, 3)],
        "tessellation": round(float(rng.uniform(0.0, 0.12) * (1 - pigment)), 3),
        "macula_dark": round(float(rng.uniform(0.25, 0.45)), 3),
        "texture_seed": int(rng.integers(2**31)),
        "vessel_seed": int(rng.integers(2**31)),
        "tortuosity": round(float(rng.uniform(1.5, 3.5)), 2),
        "vein_width": round(float(rng.uniform(1.9, 2.5)), 2),
        "disc": [round(float(rng.uniform(-46, -38)), 1), round(float(rng.uniform(-6, 4)), 1)],
        "disc_r": round(disc_r, 2),
        "fovea": [round(float(rng.uniform(14, 22)), 1), round(float(rng.uniform(0, 7)), 1)],
        "cdr": float(rng.choice([0.2, 0.25, 0.3, 0.35, 0.4])),
        "notch": "none", "ppa": 0.0, "frisen": 0, "dme": "absent", "beading": 0,
        "microaneurysms": [], "haemorrhages": [], "exudates": [], "cotton_wool": [], "flame": [],
        "nv": [], "irma": [], "preretinal": [], "splinter": [],
    }


def _lesions(rng: np.random.Generator, p: dict, diagnosis: str) -> None:
    """Place the lesions of a diabetic retinopathy grade on the patient's retina."""
    disc, fovea = p["disc"], p["fovea"]
    off_disc = [(disc, p["disc_r"] + 4)]
    counts = {"mild": (5, 0, 0), "moderate": (14, 8, 2), "severe": (26, 22, 4),
              "proliferative": (18, 12, 3)}[diagnosis]
    n_ma, n_haem, n_cws = (int(c * rng.uniform(0.8, 1.3)) for c in counts)
    p["microaneurysms"] = [pt + [round(float(rng.uniform(0.9, 1.4)), 2)]
                           for pt in _scatter(rng, n_ma, fovea, 38, off_disc + [(fovea, 4)])]
    if diagnosis == "severe":  # the 4-2-1 rule: haemorrhages in all four quadrants
        centres = [[fovea[0] + dx, fovea[1] + dy] for dx in (-45, 30) for dy in (-45, 45)]
        pts = [pt for c in centres for pt in _scatter(rng, n_haem // 4, c, 22, off_disc)]
    else:
        pts = _scatter(rng, n_haem, fovea, 45, off_disc + [(fovea, 6)])
    p["haemorrhages"] = [pt + [round(float(rng.uniform(1.6, 3.6)), 2),
                               round(float(rng.uniform(1.4, 3.0)), 2),
                               round(float(rng.uniform(0, 180)), 1)] for pt in pts]
    p["cotton_wool"] = [pt + [round(float(rng.uniform(3.0, 5.5)), 2),
                              round(float(rng.uniform(2.0, 3.5)), 2),
                              round(float(rng.uniform(0, 180)), 1)]
                        for pt in _scatter(rng, n_cws, [disc[0] + 35, disc[1]], 30, off_disc)]
    exudate_centres: list[list[float]] = []
    if p["dme"] == "centre-involving":
        exudate_centres = [[fovea[0] + rng.normal(0, 3), fovea[1] + rng.normal(0, 3)]]
    elif p["dme"] == "non-centre-involving":
        angle = rng.uniform(0, 2 * math.pi)
        exudate_centres = [[fovea[0] + 22 * math.cos(angle), fovea[1] + 22 * math.sin(angle)]]
    for cx, cy in exudate_centres:
        ring = 9 + rng.uniform(0, 5)  # circinate ring around a leaking focus
        for a in rng.uniform(0, 2 * math.pi, int(rng.integers(14, 24))):
            rr = ring * rng.uniform(0.6, 1.15)
            p["exudates"].append([round(float(cx + rr * math.cos(a)), 1),
                                  round(float(cy + rr * math.sin(a)), 1),
                                  round(float(rng.uniform(0.7, 1.8)), 2)])
    if diagnosis == "severe":
        p["beading"] = 1
        p["irma"] = [pt + [round(float(rng.uniform(5, 8)), 1), int(rng.integers(2**31))]
                     for pt in _scatter(rng, 2, fovea, 40, off_disc + [(fovea, 20)])]
    if diagnosis == "proliferative":
        site = p["nv_site"]
        if site == "disc":
            centre = [disc[0], disc[1]]
            radius = p["disc_r"] * rng.uniform(1.1, 1.5)
        else:
            side = rng.choice([-1, 1])  # along the superior or inferior temporal arcade
            centre = [fovea[0] + rng.uniform(-20, 10), fovea[1] + side * rng.uniform(38, 48)]
            radius = rng.uniform(9, 13)
        p["nv"] = [[round(float(centre[0]), 1), round(float(centre[1]), 1), round(float(radius), 1),
                    int(rng.integers(2**31))]]
        if p["preretinal_haemorrhage"]:
            x, y = _scatter(rng, 1, [fovea[0], fovea[1] + 30], 12, off_disc)[0]
            p["preretinal"] = [[x, y, round(float(rng.uniform(9, 14)), 1),
                                round(float(rng.uniform(6, 9)), 1)]]


def add_papilledema(rng: np.random.Generator, p: dict, grade: int) -> None:
    """Disc swelling of a Frisén grade, with its haemorrhages and cotton-wool spots."""
    disc, r = p["disc"], p["disc_r"]
    p["frisen"] = grade
    if p["peripapillary_haemorrhages"]:
        for a in rng.uniform(0, 2 * math.pi, int(rng.integers(3, 7))):
            rr = r * (1.2 + 0.12 * grade) * rng.uniform(0.95, 1.3)
            p["flame"].append([round(disc[0] + rr * math.cos(a), 1),
                               round(disc[1] + rr * math.sin(a), 1),
                               round(float(rng.uniform(5, 9)), 1), round(float(rng.uniform(1.6, 2.4)), 2),
                               round(math.degrees(a), 1)])
    if grade >= 4:
        for a in rng.uniform(0, 2 * math.pi, 2):
            rr = r * (1.9 + 0.1 * grade)
            p["cotton_wool"].append([round(disc[0] + rr * math.cos(a), 1),
                                     round(disc[1] + rr * math.sin(a), 1),
                                     round(float(rng.uniform(3, 4.5)), 2),
                                     round(float(rng.uniform(2, 3)), 2), round(math.degrees(a) + 90, 1)])


def present_lesions(p: dict) -> list[str]:
    """The LESIONS the patient's fundus shows, in LESIONS order."""
    present = {
        "microaneurysms": bool(p["microaneurysms"]),
        "dot-blot haemorrhages": bool(p["haemorrhages"]),
        "hard exudates": bool(p["exudates"]),
        "cotton-wool spots": bool(p["cotton_wool"]),
        "neovascularisation": bool(p["nv"]),
        "optic disc swelling": p["frisen"] > 0,
        "peripapillary flame haemorrhages": bool(p["flame"]),
        "preretinal haemorrhage": bool(p["preretinal"]),
        "venous beading": bool(p["beading"]),
        "a disc haemorrhage": bool(p["splinter"]),
    }
    return [name for name in LESIONS if present[name]]


_PRONOUN = {"M": "his", "F": "her"}


def _presentation(rng: np.random.Generator, diagnosis: str, age: int, sex: str, eye: str) -> str:
    """A short, patient-specific history: it becomes the handle questions use to name the case."""
    pr = _PRONOUN[sex]
    dtype = int(rng.choice([1, 2], p=[0.25, 0.75]))
    years = int(rng.integers(2, max(3, min(35, age - (25 if dtype == 2 else 3)))))
    if diagnosis == "normal":
        options = [
            f"with {years} years of type {dtype} diabetes attending annual diabetic eye screening",
            f"attending a routine sight test after {pr} reading glasses stopped helping",
            f"with new floaters in the {eye} eye for {int(rng.integers(2, 15))} days",
            "starting hydroxychloroquine for rheumatoid arthritis, seen for a baseline eye examination",
            f"with {years} years of type {dtype} diabetes at {pr} first screening visit in a new practice",
        ]
    elif diagnosis in ("mild", "moderate", "severe", "proliferative"):
        complaint = rng.choice([
            "attending annual diabetic eye screening without visual symptoms",
            f"and {int(rng.integers(2, 10))} weeks of blurred reading vision",
            f"and new floaters in the {eye} eye",
            "referred by the diabetes clinic after a missed screening appointment",
            f"and a recent rise in {pr} HbA1c",
            "attending screening during pregnancy",
        ])
        if complaint == "attending screening during pregnancy" and sex == "M":
            complaint = "attending screening after starting insulin"
        options = [f"with {years} years of type {dtype} diabetes {complaint}"]
    elif diagnosis == "glaucoma":
        options = [
            "referred by the optometrist with raised intraocular pressure and a family history of glaucoma",
            "with high myopia referred after a suspicious disc appearance at a routine sight test",
            f"who keeps bumping into door frames on {pr} {rng.choice(['left', 'right'])} side",
            "of African-Caribbean descent referred with raised intraocular pressure",
            "using long-term inhaled steroids, referred with an abnormal optic disc",
        ]
    else:
        options = [
            f"with a body-mass index of {int(rng.integers(31, 42))} and {int(rng.integers(2, 8))} weeks "
            "of daily headaches and transient visual obscurations",
            f"with {int(rng.integers(1, 4))} weeks of morning headaches and vomiting",
            "with pulsatile tinnitus and headaches after starting doxycycline for acne",
            f"with headaches and horizontal double vision for {int(rng.integers(5, 20))} days",
            "found to have swollen discs at a routine sight test while asymptomatic",
        ]
    return str(options[int(rng.integers(len(options)))])


def _follow_up(rng: np.random.Generator, p: dict, diagnosis: str) -> str:
    if diagnosis == "normal":
        if "diabetes" in p["presentation"]:
            months = int(rng.choice([12, 24]))
            return f"Repeat diabetic eye screening in {months} months"
        return str(rng.choice(["Routine eye examination in 2 years",
                               "No treatment needed; routine optometric review in 2 years"]))
    if diagnosis == "mild":
        return str(rng.choice(["Repeat diabetic eye screening in 12 months",
                               "Repeat retinal photography in 9 months and optimise glycaemic control"]))
    if p["dme"] == "centre-involving":
        return "Refer to the retina clinic within 4 weeks for macular OCT and anti-VEGF assessment"
    if diagnosis == "moderate":
        return str(rng.choice(["Review in the retina clinic in 6 months",
                               "Refer to the retina clinic within 13 weeks"]))
    if diagnosis == "severe":
        return "Refer to the retina clinic within 2 weeks for consideration of panretinal photocoagulation"
    if diagnosis == "proliferative":
        return "Urgent referral to the retina clinic within 1 week for panretinal photocoagulation"
    if diagnosis == "glaucoma":
        weeks = 2 if p["iop"] >= 30 else 4
        return f"Visual field testing and OCT of the RNFL; refer to the glaucoma clinic within {weeks} weeks"
    return str(rng.choice([
        "Urgent same-day neuroimaging (MRI with MR venography) and lumbar puncture",
        "Same-day referral for neuroimaging, lumbar puncture with opening pressure and blood pressure check",
    ]))


def new_patient(rng: np.random.Generator, diagnosis: str, index: int, used_handles: set[str]) -> dict:
    """A patient with diagnosis `diagnosis`; `index` (their rank among the patients with that
    diagnosis) alternates binary findings so that every variant of the diagnosis occurs."""
    p = _anatomy(rng)
    p["diagnosis"] = diagnosis
    p["eye"] = str(rng.choice(["right", "left"]))
    p["sex"] = str(rng.choice(["M", "F"]))
    age_range = {"normal": (24, 78), "glaucoma": (48, 84), "papilledema": (19, 52)}.get(diagnosis, (28, 80))
    while True:
        p["age"] = int(rng.integers(*age_range))
        if diagnosis == "papilledema" and rng.random() < 0.7:
            p["sex"] = "F"  # idiopathic intracranial hypertension mostly affects young women
        p["presentation"] = _presentation(rng, diagnosis, p["age"], p["sex"], p["eye"])
        handle = patient_handle(p["age"], p["sex"], p["presentation"])
        if handle not in used_handles:
            used_handles.add(handle)
            p["handle"] = handle
            break
    p["iop"] = int(rng.integers(12, 21))
    va_range = {"normal": (0, 3), "mild": (1, 3), "moderate": (1, 4), "severe": (2, 5),
                "proliferative": (2, 7), "glaucoma": (1, 4), "papilledema": (1, 4)}[diagnosis]
    if diagnosis in ICDR_GRADE or "diabetes" in p["presentation"]:
        p["hba1c"] = round(float(rng.uniform(6.4, 7.4) + 0.5 * ICDR_GRADE.get(diagnosis, 0)), 1)
    if diagnosis in ("moderate", "severe"):
        p["dme"] = ("absent", "non-centre-involving", "centre-involving")[(index + (diagnosis == "severe")) % 3]
    elif diagnosis == "proliferative":
        p["dme"] = ("absent", "centre-involving")[index % 2]
        p["nv_site"] = ("disc", "elsewhere")[index // 2 % 2]
        p["preretinal_haemorrhage"] = int(index in (1, 2))
    if p["dme"] == "centre-involving":
        va_range = (3, 7)
    p["va"] = SNELLEN[int(rng.integers(*va_range))]
    if diagnosis in ("mild", "moderate", "severe", "proliferative"):
        _lesions(rng, p, diagnosis)
    elif diagnosis == "glaucoma":
        p["iop"] = int(rng.integers(22, 35))
        p["notch"] = str(rng.choice(["inferior", "superior", "none"], p=[0.45, 0.3, 0.25]))
        p["ppa"] = round(float(rng.uniform(0.5, 1.0)), 2) if index % 2 else 0.0
        p["disc_haemorrhage"] = int(index % 2 == 0)
        if p["disc_haemorrhage"]:
            # A Drance haemorrhage sits at the pole where the rim is thinnest.
            a = math.radians(75 if p["notch"] != "superior" else -75)
            r = p["disc_r"] * 1.05
            p["splinter"] = [[round(p["disc"][0] + r * math.cos(a), 1), round(p["disc"][1] + r * math.sin(a), 1),
                              5.0, 1.4, round(math.degrees(a), 1)]]
    elif diagnosis == "papilledema":
        p["bp"] = f"{int(rng.integers(112, 150))}/{int(rng.integers(68, 95))}"
        p["bilateral"] = int(index != 1)
        p["peripapillary_haemorrhages"] = int(index % 2 == 0)
    p["follow_up"] = _follow_up(rng, p, diagnosis)
    return p
