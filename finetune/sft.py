"""The knowledge fine-tuning baseline (docs/design.md §7): LoRA SFT that puts the documents' facts into the
weights, with no retrieval, to compare against teaching the model to use evidence (RAG-PT).

Training examples, in TRL's conversational prompt-completion format (the loss covers the answer only):

* facts: every "Label: value." statement of every indexed document becomes "What is the <label>
  of <title>?" -> "<value>" (the herb names in all scripts are part of the question, so a question
  naming a herb in Chinese or Latin can hit the same fact); each document also gives one
  "What does the reference say about <title>?" -> its text (cut to `max_text_words`);
* format: the train split's closed questions, asked exactly as the no-retrieval prompt asks them
  (image, question, options) -> the right option's text, so the model learns the answer format.

Documents that are added to the index after training are, by definition, not among them.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from finetune.lora import (TuneSettings, check_targets, lora_config, run_info, run_training, save_results,
                           training_arguments)
from finetune.pairs import text_messages
from rag.corpus import Document, QAItem
from rag.qa_inputs import qa_picture

_FACT = re.compile(r"(?:^|(?<=[.;]\s))([A-Z][A-Za-z ]{2,40}):\s+([^:]+?)\.(?=\s|$)")


def fact_examples(doc: Document, max_text_words: int = 120) -> list[dict[str, Any]]:
    """The question-answer pairs that state one document's facts (text only)."""
    names = [n for n in doc.names.values() if n and n not in doc.title]
    subject = doc.title + (f" ({', '.join(names)})" if names else "")
    words = doc.text.split()
    text = " ".join(words[:max_text_words]) + (" …" if len(words) > max_text_words else "")
    examples = [_example(f"What does the reference say about {subject}?", text)]
    for label, value in _FACT.findall(doc.text):
        examples.append(_example(f"What is the {label.strip().lower()} of {subject}?", value.strip()))
    return examples


def format_examples(items: list[QAItem], qa_dir: Path) -> list[dict[str, Any]]:
    """Train-split closed questions asked as the no-retrieval prompt asks them."""
    out = []
    for item in items:
        picture = qa_picture(item, qa_dir)
        out.append({"prompt": text_messages(item.question, [], item.options),
                    "completion": [{"role": "assistant", "content": item.answer}],
                    "images": [picture] if picture is not None else []})
    return out


def _example(question: str, answer: str) -> dict[str, Any]:
    return {"prompt": text_messages(question, [], None), "completion": [{"role": "assistant", "content": answer}],
            "images": []}


def prompt_completion_dataset(rows: list[dict[str, Any]]) -> Any:
    """TRL conversational prompt-completion rows (string contents, images apart) as a shuffled dataset."""
    import datasets

    message = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
    features = datasets.Features({"prompt": message, "completion": message,
                                  "images": datasets.Sequence(datasets.Image())})
    return datasets.Dataset.from_list(rows, features=features).shuffle(seed=0)


def knowledge_dataset(docs: list[Document], train_items: list[QAItem], qa_dir: Path) -> Any:
    rows = [e for d in docs for e in fact_examples(d)] + format_examples(train_items, qa_dir)
    if not rows:
        raise ValueError("no SFT examples: the corpus has no documents and the QA file no train questions")
    return prompt_completion_dataset(rows)


def run_sft(base: str | Path, dataset: Any, out: str | Path, settings: TuneSettings, title: str, data: str,
            resume: bool | str = False, device: str | None = None,
            details: dict[str, Any] | None = None) -> dict[str, Any]:
    """LoRA SFT of the VLM saved at `base` on prompt-completion `dataset` (loss on the completion only);
    writes `out/adapter` and `out/merged`, with `details` about the data in the training log."""
    from trl import SFTConfig, SFTTrainer

    from rag.vlm import load_vlm

    started = time.perf_counter()
    out = Path(out)
    model, processor = load_vlm(base, device)
    check_targets(model, settings)
    args = SFTConfig(**training_arguments(settings, out), completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                         peft_config=lora_config(settings))
    run_training(trainer, out, resume)
    info = {**run_info(title, str(base), data, len(dataset), settings, started), **(details or {})}
    return save_results(trainer, processor, out, info)


def train_sft(base: str | Path, docs: list[Document], train_items: list[QAItem], qa_dir: Path, out: str | Path,
              settings: TuneSettings, resume: bool | str = False, device: str | None = None) -> dict[str, Any]:
    """Knowledge SFT: LoRA on the documents' facts (no retrieval); writes `out/adapter` and `out/merged`."""
    dataset = knowledge_dataset(docs, train_items, qa_dir)
    return run_sft(base, dataset, out, settings, "knowledge SFT (LoRA, no retrieval)",
                   f"{len(docs)} documents + {len(train_items)} train questions", resume, device)
