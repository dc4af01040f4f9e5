"""`MedRAG`: the query path of docs/design.md §5 in one object, stage by stage.

    gather:  retrieve (search every channel -> fuse -> route, in `Retriever.retrieve`)
             -> select (adaptive k, `rag.selection.select_hits`)
    ask:     abstain if the kept evidence is weak, else
    respond: prompt with numbered evidence -> score the options or generate -> cite -> Answer

It abstains ("the evidence does not answer this") instead of guessing when retrieval is weak: when
nothing survives selection, or when the best kept item is not close to the query in any dense
channel (question->text cosine, image->image cosine) nor a strong lexical match. Every answer that
uses evidence cites at least one evidence item: the model's own [n] markers when it writes them,
otherwise the kept items whose text states the answer (marked `how="attributed"`, so an evaluation
can tell the two apart).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from rag.encoders import ImageInput, load_rgb
from rag.fusion import Hit
from rag.generator import Generator, create_generator
from rag.prompt import (ABSTAIN_TEXT, EvidenceText, build_prompt, checkable_answer, match_option, parse_citations,
                        snippet, stating_evidence, supporting_evidence)
from rag.retriever import Retriever
from rag.scoring import baseline_prompt
from rag.selection import select_hits
from rag.vlm import DEFAULT_VLM

# How close the best kept evidence must be for the system to answer: question->text cosine, image->
# image cosine, or BM25 score (a herb named in Chinese or Latin is far from every English document for
# the dense encoder, but an exact name match for BM25). Bundles calibrate their own at build time
# (`rag.abstention`); these are the fallback for bundles built before that, tuned on the sample
# index by benchmarks/latency.py: off-topic questions stay below all three (text cosine <= 0.15,
# BM25 <= 2.5), questions naming a herb reach BM25 >= 25.
MIN_TEXT_SIMILARITY = 0.30
MIN_IMAGE_SIMILARITY = 0.75
MIN_LEXICAL_SCORE = 10.0
MODES = ("auto", "generate", "options")


@dataclass
class Evidence:
    number: int
    id: str
    title: str
    domain: str
    score: float
    image: str | None          # absolute path of the document's first image, for display
    snippet: str


@dataclass
class Citation:
    number: int
    evidence_id: str
    how: str                   # "model": written by the model as [n]; "attributed": the item states the answer
    # For the model's own citations: whether the cited document states the chosen answer verbatim while
    # some kept item does (False: the model cited the wrong item); None when that cannot be told
    # (a yes/no answer, or no kept item states it word for word).
    states_answer: bool | None = None

    def label(self) -> str:
        """How the citation came about, as the console, notebooks and web page show it."""
        return self.how + (", does not state the answer" if self.states_answer is False else "")


@dataclass
class Answer:
    question: str
    text: str
    citations: list[Citation]
    evidence: list[Evidence]
    domain: str
    domain_confidence: float
    abstained: bool
    mode: str                  # "generate", "options" or "abstain"
    option: int | None = None  # index of the chosen option for closed questions
    option_scores: list[float] | None = None
    selection: str = ""        # why adaptive selection kept this many items
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["timings_ms"] = {k: round(v * 1000, 1) for k, v in data.pop("timings").items()}
        return data


@dataclass
class Context:
    """The evidence gathered for one question, before any answer is written."""

    kept: list[Hit]
    evidence: list[Evidence]
    domain: str
    confidence: float
    reason: str                # why adaptive selection kept this many items
    timings: dict[str, float]


class MedRAG:
    def __init__(self, retriever: Retriever, generator: Generator, min_text_similarity: float | None = None,
                 min_image_similarity: float | None = None, min_lexical_score: float | None = None):
        """Abstention thresholds left None come from the bundle (calibrated at build time), else the constants."""
        self.retriever = retriever
        self.generator = generator
        calibrated = retriever.bundle.abstention_thresholds()
        self.min_text_similarity = (min_text_similarity if min_text_similarity is not None
                                    else calibrated.get("text", MIN_TEXT_SIMILARITY))
        self.min_image_similarity = (min_image_similarity if min_image_similarity is not None
                                     else calibrated.get("image", MIN_IMAGE_SIMILARITY))
        self.min_lexical_score = (min_lexical_score if min_lexical_score is not None
                                  else calibrated.get("bm25", MIN_LEXICAL_SCORE))

    @classmethod
    def load(cls, index_dir: str | Path, generator: Generator | str = DEFAULT_VLM, device: str | None = None,
             **kwargs: Any) -> "MedRAG":
        """Load an index bundle and a generator (by name: the default VLM, a saved folder, or a model id)."""
        retriever = Retriever.load(index_dir, device=device)
        if isinstance(generator, str):
            generator = create_generator(generator, device=device)
        return cls(retriever, generator, **kwargs)

    @staticmethod
    def best_similarities(kept: list[Hit], question: str | None, image: Any) -> tuple[float, float, float]:
        """The best question->text cosine, image->image cosine and BM25 score among the kept items
        (-1 where the channel did not run or found nothing)."""
        def best(channel: str) -> float:
            return max((h.channel_scores.get(channel, -1.0) for h in kept), default=-1.0)

        return (best("text") if question else -1.0, best("image") if image is not None else -1.0,
                best("bm25") if question else -1.0)

    def evidence_is_weak(self, best_text: float, best_image: float, best_lexical: float) -> bool:
        return (best_text < self.min_text_similarity and best_image < self.min_image_similarity
                and best_lexical < self.min_lexical_score)

    def ask(self, question: str, image: ImageInput | None = None, options: list[str] | None = None,
            mode: str = "auto", k: int | None = None, retrieval: bool = True, abstain: bool = True,
            max_new_tokens: int = 48) -> Answer:
        """Answer `question` (about `image`, if given) from retrieved evidence, with citations.

        mode: "options" scores each option by log-probability (closed questions), "generate" writes
        free text (closed questions are then matched to an option), "auto" picks "options" when
        options are given. k: keep exactly k items instead of adaptive selection. retrieval=False
        answers without evidence (the no-retrieval baseline)."""
        if not question or not question.strip():
            raise ValueError("ask needs a non-empty question")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "options" and not options:
            raise ValueError("mode='options' needs options")
        started = time.perf_counter()
        picture = load_rgb(image) if image is not None else None
        context = self.gather(question, picture, options, k=k, retrieval=retrieval)
        if retrieval and abstain and self.evidence_is_weak(*self.best_similarities(context.kept, question, picture)):
            context.timings["total"] = time.perf_counter() - started
            return Answer(question, ABSTAIN_TEXT, [], context.evidence, context.domain, context.confidence, True,
                          "abstain", selection=context.reason, timings=context.timings)
        answer = self.respond(question, picture, options, context, mode, max_new_tokens=max_new_tokens)
        answer.timings["total"] = time.perf_counter() - started
        return answer

    def gather(self, question: str, picture: Image.Image | None, options: list[str] | None = None,
               k: int | None = None, retrieval: bool = True) -> Context:
        """Retrieve and select the evidence for one question (adaptive selection, or exactly `k` items)."""
        if not retrieval:
            return Context([], [], "", 0.0, "retrieval off", {})
        result = self.retriever.retrieve(question, picture, k=max(k or 0, self.retriever.bundle.selection.k_max))
        timings = {f"retrieve_{name}": v for name, v in result.timings.items()}
        if k is None:
            kept, selection = select_hits(result.hits, self.retriever.bundle.selection)
            reason = selection.reason
        else:
            kept, reason = result.hits[:k], f"fixed k={k} requested"
        evidence = [self.evidence_item(i + 1, hit, question, options) for i, hit in enumerate(kept)]
        return Context(kept, evidence, result.routing.domain, result.routing.confidence, reason, timings)

    def respond(self, question: str, picture: Image.Image | None, options: list[str] | None, context: Context,
                mode: str = "auto", generator: Generator | None = None, max_new_tokens: int = 48) -> Answer:
        """Answer from already gathered evidence, with this pipeline's generator or another one.

        Evaluation and preference-pair building gather once per question and respond several times:
        with other models, or with the image replaced, over exactly the same evidence."""
        generator = generator or self.generator
        mode = ("options" if options else "generate") if mode == "auto" else mode
        timings = dict(context.timings)
        evidence = context.evidence
        items = [EvidenceText(e.number, e.title, e.snippet) for e in evidence]
        prompt = build_prompt(question, items, picture, options)
        t = time.perf_counter()
        chosen, scores, text_citation = None, None, ""
        if mode == "options":
            rule = generator.scoring.rule_for(options)
            scores = generator.score_options(prompt, options, baseline=baseline_prompt(rule, question, items, picture,
                                                                                       options), cite=len(items))
            chosen = max(range(len(options)), key=lambda i: scores[i])
            text = options[chosen]
            text_citation = self._model_citation(generator.option_logprobs(prompt, options, len(items))[chosen].citation)
        else:
            text = generator.generate(prompt, max_new_tokens).text
            chosen = match_option(text, options) if options else None
            text_citation = text
        timings["generate"] = time.perf_counter() - t
        citations = self._cite(text if chosen is None else options[chosen], text_citation, evidence, context.kept)
        if citations and mode == "options":
            text = f"{text} " + "".join(f"[{c.number}]" for c in citations)
        timings["total"] = sum(timings.values())
        return Answer(question, text, citations, evidence, context.domain, context.confidence, False, mode, chosen,
                      scores, context.reason, timings)

    @staticmethod
    def evidence_item(number: int, hit: Hit, question: str, options: list[str] | None) -> Evidence:
        query = question + " " + " ".join(options or [])
        image = str(hit.doc.images[0]) if hit.doc.images else None
        return Evidence(number, hit.doc.id, hit.doc.title, hit.doc.domain, hit.score, image,
                        snippet(hit.doc.text, query))

    @staticmethod
    def _model_citation(citation: tuple[float, ...]) -> str:
        """The citation the model would write after its chosen option, as text ("[2]"), when it puts
        more than half its probability on one evidence number after " ["; else nothing."""
        if not citation:
            return ""
        best = max(range(len(citation)), key=citation.__getitem__)
        return f"[{best + 1}]" if math.exp(citation[best]) > 0.5 else ""

    @staticmethod
    def _cite(answer: str, generated: str, evidence: list[Evidence], kept: list[Hit]) -> list[Citation]:
        if not evidence:
            return []
        by_number = {e.number: e for e in evidence}
        texts = [e.title + " " + h.doc.text for e, h in zip(evidence, kept)]
        items = [EvidenceText(e.number, e.title, e.snippet) for e in evidence]
        cited = parse_citations(generated, len(evidence))
        if cited:
            stating = stating_evidence(answer, items, texts) if checkable_answer(answer) else []
            return [Citation(n, by_number[n].id, "model", (n in stating) if stating else None) for n in cited]
        numbers = supporting_evidence(answer, items, texts)
        return [Citation(n, by_number[n].id, "attributed") for n in numbers]

