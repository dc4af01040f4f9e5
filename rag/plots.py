"""Pictures for the QA notebooks: the query beside its retrieved evidence, and the selection cut."""

from __future__ import annotations

from typing import Any

from rag.encoders import ImageInput, load_rgb


def plot_evidence(answer: Any, query_image: ImageInput | None = None, max_items: int = 5):
    """The query image (if any) and the first image of each evidence item, cited items marked."""
    import matplotlib.pyplot as plt

    items = answer.evidence[:max_items]
    panels = ([("query", load_rgb(query_image))] if query_image is not None else []) + \
        [(e, load_rgb(e.image) if e.image else None) for e in items]
    if not panels:
        raise ValueError("nothing to show: the answer has no evidence and there is no query image")
    cited = {c.number for c in answer.citations}
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0), squeeze=False)
    for ax, (what, picture) in zip(axes[0], panels):
        ax.axis("off")
        if picture is not None:
            ax.imshow(picture)
        if what == "query":
            ax.set_title("query", fontsize=9, fontweight="bold")
        else:
            mark = "cited " if what.number in cited else ""
            ax.set_title(f"{mark}[{what.number}] {what.title[:28]}\nscore {what.score:.4f}", fontsize=8,
                         color="tab:red" if what.number in cited else "black")
    fig.tight_layout()
    return fig


def plot_selection(result: Any, kept: int, title: str = ""):
    """Fused scores of the ranked candidates with the adaptive cut after the kept ones."""
    import matplotlib.pyplot as plt

    scores = [h.score for h in result.hits]
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.bar(range(1, len(scores) + 1), scores, color=["tab:blue" if i < kept else "lightgray" for i in range(len(scores))])
    ax.axvline(kept + 0.5, color="tab:red", linestyle="--", label=f"cut: keep {kept}")
    ax.set_xlabel("rank")
    ax.set_ylabel("fused RRF score")
    ax.set_title(title or "retrieved candidates and the selection cut", fontsize=10)
    ax.legend()
    fig.tight_layout()
    return fig
