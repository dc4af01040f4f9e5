"""llama-index adapters (docs/design.md §9): our retriever and adaptive selection behind its interfaces.

The core (`rag.retriever`, `rag.selection`) knows nothing of llama-index; this module translates at
the edge so that a llama-index pipeline can use domain-aware retrieval and calibrated selection:

    engine = as_query_engine(Retriever.load("index/"), llm=my_llm)
    response = engine.query("Which pattern does a pale, swollen tongue with tooth marks suggest?")
    response.source_nodes            # the selected evidence, best first, with routing and selection notes

An image query goes in through `QueryBundle(query_str=question, image_path=path)`; an empty
`query_str` asks with the image alone.

llama-index falls back to OpenAI for any LLM or embedding model it is not given, so nothing here
ever reads `Settings.llm` or `Settings.embed_model`: the retriever needs neither, and
`as_query_engine` insists on an explicit LLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.llm import LLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from rag.fusion import Hit
from rag.retriever import Retriever
from rag.routing import Routing
from rag.selection import RULES, Selection, SelectionConfig, select

# Metadata the LLM sees in front of each document's title and text; the rest (image paths, ranks,
# routing and selection notes) is for the caller and would only add noise to the prompt.
LLM_METADATA_KEYS = ("domain", "source")


class MedRAGRetriever(BaseRetriever):
    """A llama-index retriever over our domain-aware `Retriever`: one `TextNode` per fused hit.

    Nodes keep our ranking and fused RRF scores (positive, best first) and carry the routing
    decision, so `AdaptiveSelectionPostprocessor` can cut the list exactly as `rag.selection.select_hits` does.
    `last_result` holds the most recent `RetrievalResult` (timings, channels) for inspection.
    """

    def __init__(self, retriever: Retriever, k: int = 10, domains: Sequence[str] | None = None,
                 filters: dict[str, Any] | None = None, channels: Sequence[str] | None = None,
                 routing: bool = True, **kwargs: Any) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.retriever = retriever
        self.k = k
        self.domains = list(domains) if domains else None
        self.filters = filters
        self.channels = list(channels) if channels else None
        self.routing = routing
        self.last_result = None
        super().__init__(**kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        result = self.retriever.retrieve(question=query_bundle.query_str or None, image=query_bundle.image_path,
                                         k=self.k, domains=self.domains, channels=self.channels,
                                         routing=self.routing, filters=self.filters)
        self.last_result = result
        return [NodeWithScore(node=hit_node(hit, result.routing), score=hit.score) for hit in result.hits]


def hit_node(hit: Hit, routing: Routing) -> TextNode:
    """One retrieved document as a llama-index node; its id is the document id."""
    doc = hit.doc
    metadata = {
        "domain": doc.domain,
        "source": doc.source,
        "title": doc.title,
        "images": list(doc.images),
        "names": dict(doc.names),
        "doc_metadata": dict(doc.metadata),
        "ranks": dict(hit.ranks),
        "channel_scores": dict(hit.channel_scores),
        "routed_domain": routing.domain,
        "routing_confidence": routing.confidence,
        "routing_mode": routing.mode,
        "searched_domains": list(routing.searched),
    }
    hidden = [key for key in metadata if key not in LLM_METADATA_KEYS]
    return TextNode(id_=doc.id, text=f"{doc.title}\n{doc.text}", metadata=metadata,
                    excluded_llm_metadata_keys=hidden, excluded_embed_metadata_keys=list(metadata))


class AdaptiveSelectionPostprocessor(BaseNodePostprocessor):
    """Keep the first k nodes, with k chosen by our selection rule (docs/design.md §5 step 3) on their scores.

    Nodes must arrive best first with positive scores, as `MedRAGRetriever` returns them; they are
    never re-sorted (out-of-order scores are an error, not something to fix silently). Each kept node
    is a copy whose metadata gains "selection_rule" and "selection_reason" (hidden from the LLM);
    `last_selection` is the most recent `Selection`.
    """

    config: SelectionConfig = Field(description="selection rule and calibrated parameters, e.g. bundle.selection")
    rule: str | None = Field(default=None, description="rule to apply instead of the config's")
    _last_selection: Selection | None = PrivateAttr(default=None)

    def __init__(self, config: SelectionConfig, rule: str | None = None, **kwargs: Any) -> None:
        if rule is not None and rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(map(repr, RULES))}; got {rule!r}")
        super().__init__(config=config, rule=rule, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "AdaptiveSelectionPostprocessor"

    @property
    def last_selection(self) -> Selection | None:
        return self._last_selection

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        unscored = [i for i, n in enumerate(nodes) if n.score is None]
        if unscored:
            i = unscored[0]
            raise ValueError(f"AdaptiveSelectionPostprocessor needs a score on every node; node {i} "
                             f"(id {nodes[i].node.node_id!r}) has none. Put it right after a retriever that "
                             f"scores, such as MedRAGRetriever, and before any postprocessor that drops scores")
        selection = select([n.score for n in nodes], self.config, rule=self.rule)
        self._last_selection = selection
        return [NodeWithScore(node=_with_selection(n.node, selection), score=n.score) for n in nodes[:selection.k]]


def _with_selection(node: Any, selection: Selection) -> Any:
    """A copy of `node` noting why it was kept; the caller's node is left as it was."""
    notes = {"selection_rule": selection.rule, "selection_reason": selection.reason}
    return node.model_copy(update={
        "metadata": {**node.metadata, **notes},
        "excluded_llm_metadata_keys": [*node.excluded_llm_metadata_keys, *notes],
        "excluded_embed_metadata_keys": [*node.excluded_embed_metadata_keys, *notes],
    })


def as_query_engine(retriever: Retriever, llm: LLM, k: int = 10, rule: str | None = None,
                    domains: Sequence[str] | None = None, filters: dict[str, Any] | None = None,
                    channels: Sequence[str] | None = None, routing: bool = True,
                    **engine_kwargs: Any) -> RetrieverQueryEngine:
    """A `RetrieverQueryEngine`: our retrieval, then selection with the bundle's calibrated config.

    `llm` is required: llama-index would otherwise resolve its default, OpenAI. `engine_kwargs` go to
    `RetrieverQueryEngine.from_args` (response_mode, text_qa_template, ...).
    """
    if llm is None:
        raise ValueError("as_query_engine needs an llm; llama-index's default would call OpenAI")
    return RetrieverQueryEngine.from_args(
        retriever=MedRAGRetriever(retriever, k=k, domains=domains, filters=filters, channels=channels,
                                  routing=routing),
        llm=llm,
        node_postprocessors=[AdaptiveSelectionPostprocessor(retriever.bundle.selection, rule=rule)],
        **engine_kwargs,
    )
