"""llama-index adapters: the retriever and postprocessor reproduce our core exactly, inside a real
`RetrieverQueryEngine` (with llama-index's own MockLLM), and nothing reaches for OpenAI or the network."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from llama_index.core import Settings
from llama_index.core import settings as llama_settings
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from rag.corpus import QAItem, read_qa
from rag.index_bundle import load_bundle
from rag.llamaindex_adapters import AdaptiveSelectionPostprocessor, MedRAGRetriever, as_query_engine
from rag.retriever import RetrievalResult, Retriever
from rag.selection import RULES, SelectionConfig, select, select_hits


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Fail loudly if llama-index resolves a default LLM or embedding model, or anything opens a socket.

    Module-scoped so that it already guards the module-scoped retrievals below.
    """
    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to reach a default model or the network: {args[1:] or args}")

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("OPENAI_API_KEY", raising=False)
        patch.setattr(Settings, "_llm", None)
        patch.setattr(Settings, "_embed_model", None)
        patch.setattr(llama_settings, "resolve_llm", refuse)
        patch.setattr(llama_settings, "resolve_embed_model", refuse)
        patch.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def retriever(small_index: Path, encoders) -> Retriever:
    return Retriever(load_bundle(small_index), *encoders)


@pytest.fixture(scope="module")
def questions(small_corpus: Path) -> list[QAItem]:
    """Two test questions per domain, each with its query image."""
    items = [q for q in read_qa(small_corpus / "qa.jsonl") if q.split == "test" and q.image]
    chosen = [q for domain in ("tcm_tongue", "radiology") for q in [i for i in items if i.domain == domain][:2]]
    assert len(chosen) == 4
    return chosen


def image_path(corpus: Path, item: QAItem) -> str:
    return str(corpus / item.image)


@pytest.fixture(scope="module")
def text_runs(retriever: Retriever, questions: list[QAItem]) -> list[tuple[list[NodeWithScore], RetrievalResult]]:
    """Each question asked through the adapter and through the core, text only, k = 10."""
    adapter = MedRAGRetriever(retriever, k=10)
    return [(adapter.retrieve(q.question), retriever.retrieve(q.question, k=10)) for q in questions]


def assert_same_ranking(nodes: list[NodeWithScore], result: RetrievalResult) -> None:
    assert [n.node.node_id for n in nodes] == [h.doc.id for h in result.hits]
    assert [n.score for n in nodes] == [h.score for h in result.hits]
    first, hit = nodes[0].node, result.hits[0]
    assert first.metadata["routed_domain"] == result.routing.domain
    assert first.metadata["routing_confidence"] == result.routing.confidence
    assert first.metadata["ranks"] == hit.ranks
    assert first.metadata["images"] == hit.doc.images
    llm_text = first.get_content(MetadataMode.LLM)
    assert hit.doc.title in llm_text and f"domain: {hit.doc.domain}" in llm_text
    assert "images" not in llm_text and "routing_confidence" not in llm_text
    assert first.get_content(MetadataMode.EMBED) == f"{hit.doc.title}\n{hit.doc.text}"


def test_retriever_reproduces_core_ranking(text_runs) -> None:
    for nodes, result in text_runs:
        assert_same_ranking(nodes, result)


@pytest.mark.slow
def test_retriever_reproduces_core_ranking_with_an_image(retriever: Retriever, questions: list[QAItem],
                                                         small_corpus: Path) -> None:
    adapter = MedRAGRetriever(retriever, k=5)
    for item in (questions[0], questions[-1]):  # one per domain
        image = image_path(small_corpus, item)
        nodes = adapter.retrieve(QueryBundle(item.question, image_path=image))
        assert_same_ranking(nodes, retriever.retrieve(item.question, image=image, k=5))
        assert adapter.last_result.channels == ["text", "bm25", "joint", "image"]
        nodes = adapter.retrieve(QueryBundle("", image_path=image))  # the image alone
        assert_same_ranking(nodes, retriever.retrieve(image=image, k=5))
        assert adapter.last_result.channels == ["joint", "image"]


def test_retriever_passes_domains_and_channels(retriever: Retriever, questions: list[QAItem]) -> None:
    item = questions[-1]  # a radiology question, searched there with BM25 alone
    nodes = MedRAGRetriever(retriever, k=5, domains=["radiology"], channels=["bm25"]).retrieve(item.question)
    assert len(nodes) == 5 and all(n.node.metadata["domain"] == "radiology" for n in nodes)
    assert all(set(n.node.metadata["ranks"]) == {"bm25"} for n in nodes)
    assert nodes[0].node.metadata["routing_mode"] == "given"


@pytest.mark.parametrize("rule", [None, *RULES])
def test_postprocessor_keeps_what_select_keeps(retriever: Retriever, text_runs, rule: str | None) -> None:
    config = retriever.bundle.selection
    post = AdaptiveSelectionPostprocessor(config, rule=rule)
    for nodes, result in text_runs:
        before = [dict(n.node.metadata) for n in nodes]
        kept = post.postprocess_nodes(nodes)
        expected = select([n.score for n in nodes], config, rule=rule)
        core_hits, core_selection = select_hits(result.hits, retriever.bundle.selection, rule=rule)
        assert post.last_selection == expected == core_selection
        assert [n.node.node_id for n in kept] == [n.node.node_id for n in nodes[:expected.k]] == \
               [h.doc.id for h in core_hits]
        assert all(n.node.metadata["selection_reason"] == expected.reason for n in kept)
        assert all(n.node.metadata["selection_rule"] == expected.rule for n in kept)
        assert "selection_reason" not in kept[0].node.get_content(MetadataMode.LLM)
        assert [dict(n.node.metadata) for n in nodes] == before  # the caller's nodes are not annotated


def _scored(*scores: float | None) -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(id_=f"d{i}", text=f"doc {i}"), score=s) for i, s in enumerate(scores)]


def test_postprocessor_cuts_at_the_gap_without_resorting() -> None:
    post = AdaptiveSelectionPostprocessor(SelectionConfig(gamma=0.5))
    kept = post.postprocess_nodes(_scored(0.05, 0.048, 0.01, 0.009))
    assert [n.node.node_id for n in kept] == ["d0", "d1"]
    assert post.last_selection.k == 2 and post.last_selection.reason.startswith("cut after 2")
    with pytest.raises(ValueError, match="descending"):
        post.postprocess_nodes(_scored(0.01, 0.05))
    assert post.postprocess_nodes([]) == [] and post.last_selection.k == 0


def test_postprocessor_refuses_missing_scores_and_unknown_rules() -> None:
    post = AdaptiveSelectionPostprocessor(SelectionConfig(gamma=0.5))
    with pytest.raises(ValueError, match=r"node 1 \(id 'd1'\) has none"):
        post.postprocess_nodes(_scored(0.05, None))
    with pytest.raises(ValueError, match="rule must be one of"):
        AdaptiveSelectionPostprocessor(SelectionConfig(), rule="top_p")


@pytest.mark.slow
def test_query_engine_answers_with_the_selected_evidence(retriever: Retriever, questions: list[QAItem],
                                                         small_corpus: Path) -> None:
    engine = as_query_engine(retriever, llm=MockLLM(max_tokens=8), k=10)
    assert isinstance(engine, RetrieverQueryEngine)
    item = questions[-1]
    for query, kwargs in [(item.question, {}), (QueryBundle(item.question, image_path=image_path(small_corpus, item)),
                                                {"image": image_path(small_corpus, item)})]:
        response = engine.query(query)
        hits, selection = select_hits(retriever.retrieve(item.question, k=10, **kwargs).hits, retriever.bundle.selection)
        assert isinstance(response.response, str) and response.response
        assert [n.node.node_id for n in response.source_nodes] == [h.doc.id for h in hits]
        assert [n.score for n in response.source_nodes] == [h.score for h in hits]
        assert all(n.node.metadata["selection_reason"] == selection.reason for n in response.source_nodes)


def test_query_engine_needs_an_explicit_llm(retriever: Retriever) -> None:
    with pytest.raises(ValueError, match="needs an llm"):
        as_query_engine(retriever, llm=None)
    # Why: without one llama-index resolves its default (OpenAI), which the guard above refuses.
    with pytest.raises(AssertionError, match="default model"):
        RetrieverQueryEngine.from_args(retriever=MedRAGRetriever(retriever))
