"""Questions about a herb: thirteen per herb, with distractors that are plausible yet certainly wrong.

Distractors for list-valued facts (channels, flavours) come from other herbs' lists; cautions and
actions offered as wrong answers must not overlap the herb's own in meaning, which the word
comparison below checks (with synonyms folded together).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from sample_corpus.domain import QuestionTemplate
from sample_corpus.questions import yes_no
from sample_corpus.tcm_herb.monographs import CHANNELS, NAME_FIELDS, NATURES, clause

YES_NO_PER_HERB = 4  # of the thirteen questions per herb; answers are balanced over the domain
# Temperature sign of a nature: used so that a "no" distractor taken from another herb comes from the
# opposite side (a cold herb's caution never applies to a hot one, and the reverse).
_NATURE_SIGN = {"cold": -1, "slightly cold": -1, "cool": -1, "neutral": 0, "slightly warm": 1, "warm": 1, "hot": 1}
_STOPWORDS = frozenset("and the for with from when use used not are its all into can may has have should be "
                       "caution patterns pattern".split())
# Words that say the same thing in different phrasings: a distractor using either is as good as the
# other for deciding whether it overlaps a herb's own actions or cautions.
_SYNONYMS = {"weakness": "deficiency", "weak": "deficiency", "deficient": "deficiency", "diarrhoea": "stools",
             "loose": "stools", "restrain": "astringe", "secure": "astringe", "bind": "astringe",
             "stabilise": "astringe", "augment": "tonify", "benefit": "tonify", "strengthen": "tonify",
             "nourish": "tonify", "enrich": "tonify", "poisoning": "toxic", "toxicity": "toxic"}


def _tokens(text: str) -> set[str]:
    words = (w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3 and w not in _STOPWORDS)
    return {_SYNONYMS.get(w, w) for w in words}


def _shares_words(candidate: str, own: list[str]) -> bool:
    words = _tokens(candidate)
    return any(words & _tokens(phrase) for phrase in own)


def _opposite_side(herb: dict[str, Any], other: dict[str, Any]) -> bool:
    return _NATURE_SIGN[herb["nature"]] * _NATURE_SIGN[other["nature"]] < 0


def _multiple_choice(question: str, answer: str, pool: list[str], rng: np.random.Generator, *,
                     uses_image: bool, topic: str) -> QuestionTemplate:
    """Four options: the answer at a random position and three distractors drawn from `pool`.

    Not `sample_corpus.questions.multiple_choice`: that one draws its options from the rng in
    another order, and using it here would change every herb question of a corpus built from a
    given seed.
    """
    candidates = sorted(set(pool) - {answer})
    if len(candidates) < 3:
        raise ValueError(f"too few distractors for {question!r}")
    picks = rng.choice(len(candidates), size=3, replace=False)
    options = [candidates[i] for i in picks]
    options.insert(int(rng.integers(4)), answer)
    return QuestionTemplate(question, answer, options, uses_image, "multiple_choice", topic)


def _set_pool(own: list[str], lists: list[list[str]], prefer: Callable[[list[str]], bool]) -> list[str]:
    """Distractor strings for a list-valued fact (channels, flavours), one per distinct set.

    Lists equal to `own` as sets are dropped (order does not change the fact); those `prefer` accepts
    are used when there are enough of them, so the distractors stay plausible.
    """
    seen = {frozenset(own)}
    everything, preferred = [], []
    for values in lists:
        key = frozenset(values)
        if key in seen:
            continue
        seen.add(key)
        everything.append(", ".join(values))
        if prefer(values):
            preferred.append(", ".join(values))
    return preferred if len(preferred) >= 3 else everything


def _caution_pool(herb: dict[str, Any], herbs: list[dict[str, Any]]) -> list[str]:
    """Cautions of other herbs that certainly do not apply to `herb`.

    Only a herb's leading (most specific) caution is used. It must come from a herb of the opposite
    temperature, or name a toxicity or an incompatibility; it may not mention pregnancy (cautioned
    for many herbs), `herb`'s own names, or share content words with any of `herb`'s cautions.
    """
    pool = []
    for other in herbs:
        if other["key"] == herb["key"]:
            continue
        caution = other["cautions"][0]
        specific = "toxic" in caution.lower() or "combined with" in caution
        if not (specific or _opposite_side(herb, other)) or "pregnan" in caution.lower():
            continue
        if herb["pinyin"] in caution or _shares_words(caution, herb["cautions"]):
            continue
        pool.append(caution)
    return pool


def _action_pool(herb: dict[str, Any], herbs: list[dict[str, Any]]) -> list[str]:
    """Leading actions of herbs of another category (and, unless neutral, opposite temperature)
    that share no content word with any of `herb`'s actions."""
    pool = []
    for other in herbs:
        if other["category"] == herb["category"]:
            continue
        if _NATURE_SIGN[herb["nature"]] != 0 and not _opposite_side(herb, other):
            continue
        action = other["actions"][0]
        if not _shares_words(action, herb["actions"]):
            pool.append(action)
    return pool


def _category_family(category: str) -> str:
    """'Tonify Qi' and 'Tonify Yang' are one family; a yes/no 'no' must come from another family."""
    return category.split()[0]


def herb_questions(herb: dict[str, Any], herbs: list[dict[str, Any]], rng: np.random.Generator,
                   truths: list[bool]) -> list[QuestionTemplate]:
    """Thirteen questions: six about "the herb in this image", seven naming it by a random alias.

    `truths` gives the answers of the YES_NO_PER_HERB yes/no questions, so that the caller can
    balance yes and no over the whole domain.
    """
    def alias() -> str:
        return herb[NAME_FIELDS[int(rng.integers(len(NAME_FIELDS)))]]

    def channel_for(truth: bool) -> str:
        choices = herb["channels"] if truth else [c for c in CHANNELS if c not in herb["channels"]]
        return choices[int(rng.integers(len(choices)))]

    others = [h for h in herbs if h["key"] != herb["key"]]
    own_channels = set(herb["channels"])
    channels = ", ".join(herb["channels"])
    channel_pool = _set_pool(herb["channels"], [h["channels"] for h in others],
                             lambda c: bool(own_channels & set(c)) and abs(len(c) - len(own_channels)) <= 1)
    flavour_pool = _set_pool(herb["flavours"], [h["flavours"] for h in others],
                             lambda f: abs(len(f) - len(herb["flavours"])) <= 1)
    dosage_pool = [h["dosage"] for h in others]
    category_pool = [h["category"] for h in others]
    same_form = [h["pinyin"] for h in others if h["appearance"]["form"] == herb["appearance"]["form"]]
    names_pool = same_form if len(same_form) >= 3 else [h["pinyin"] for h in others]
    image = "the herb in this image"

    questions = [
        _multiple_choice("Which herb is shown in this image?", herb["pinyin"], names_pool, rng,
                         uses_image=True, topic="identification"),
        _multiple_choice(f"Which channels does {image} enter?", channels, channel_pool, rng,
                         uses_image=True, topic="channels"),
        _multiple_choice(f"What is the nature of {image}?", herb["nature"], list(NATURES), rng,
                         uses_image=True, topic="nature"),
        _multiple_choice(f"Which materia medica category does {image} belong to?", herb["category"],
                         category_pool, rng, uses_image=True, topic="category"),
        _multiple_choice(f"What is the usual decoction dosage of {image}?", herb["dosage"], dosage_pool, rng,
                         uses_image=True, topic="dosage"),
    ]
    channel = channel_for(truths[0])
    questions.append(yes_no(f"Does {image} enter the {channel} channel?", truths[0], uses_image=True,
                            topic="channels"))

    questions += [
        _multiple_choice(f"Which channels does {alias()} enter?", channels, channel_pool, rng,
                         uses_image=False, topic="channels"),
        _multiple_choice(f"What is the usual dosage of {alias()} in decoction?", herb["dosage"], dosage_pool,
                         rng, uses_image=False, topic="dosage"),
        _multiple_choice(f"Which flavours does {alias()} have?", ", ".join(herb["flavours"]), flavour_pool, rng,
                         uses_image=False, topic="flavours"),
        _multiple_choice(f"Which caution is given in the monograph of {alias()}?", herb["cautions"][0],
                         _caution_pool(herb, herbs), rng, uses_image=False, topic="cautions"),
    ]
    if truths[1]:
        action = herb["actions"][int(rng.integers(len(herb["actions"])))]
    else:
        pool = sorted(set(_action_pool(herb, herbs)))
        action = pool[int(rng.integers(len(pool)))]
    questions.append(yes_no(f"Is {alias()} used to {clause(action)}?", truths[1], uses_image=False,
                            topic="actions"))
    if truths[2]:
        category = herb["category"]
    else:
        families = sorted({h["category"] for h in others
                           if _category_family(h["category"]) != _category_family(herb["category"])})
        category = families[int(rng.integers(len(families)))]
    questions.append(yes_no(f"Does {alias()} belong to the category {category}?", truths[2],
                            uses_image=False, topic="category"))
    channel = channel_for(truths[3])
    questions.append(yes_no(f"Does {alias()} enter the {channel} channel?", truths[3], uses_image=False,
                            topic="channels"))
    return questions
