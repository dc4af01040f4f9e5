"""Projector alignment (LLaVA stage 1): teach the MLP projector to speak the language model's
embedding language, on the corpus's own image-caption pairs, with the CNN and the LM frozen.

Each corpus image is paired with its document's title ("Chest radiograph, normal: 76-year-old man",
"Ren Shen (Ginseng Radix et Rhizoma)"): short, identifying captions keep a CPU step cheap, and what
an image *is* is exactly what the VLM must read from it. Documents are split into train and
validation by a hash of their id, so no document's images are on both sides. The loop is ours and
short (nanoGPT style); gradients reach only the projector.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rag.corpus import read_documents, resolve_image
from rag.encoders import load_rgb
from rag.reporting import new_figure, save_figure
from rag.atomic import atomic_save_dir
from rag.vlm import IMAGE_TOKEN, MedVLMForConditionalGeneration, MedVLMProcessor

CAPTION_PROMPT = "Describe this image."


@dataclass
class AlignConfig:
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-3
    max_steps: int | None = None       # stop early on CPU: the demo trains a short, useful run
    val_fraction: float = 0.1
    val_batches: int = 4               # batches per validation pass (a fixed set: comparable points)
    eval_every: int = 10
    seed: int = 0


@dataclass
class AlignLog:
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    n_train: int = 0
    n_val: int = 0
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)


def caption_pairs(corpus: str | Path) -> list[tuple[str, Path, str]]:
    """(document id, image path, caption) for every corpus image."""
    corpus = Path(corpus)
    pairs = []
    for doc in read_documents(corpus):
        for rel in doc.images:
            path, problem = resolve_image(corpus.parent, rel)
            if path is None:  # read_documents already validated images; this guards a race with the disk
                raise ValueError(f"{corpus}: document {doc.id}: {problem}")
            pairs.append((doc.id, path, doc.title))
    if not pairs:
        raise ValueError(f"{corpus} has no images to align the projector on; add images to its documents")
    return pairs


def split_pairs(pairs: list[tuple[str, Path, str]], val_fraction: float) -> tuple[list, list]:
    """Document-level split by a stable hash of the id (independent of order and of the seed)."""
    def is_val(doc_id: str) -> bool:
        return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < val_fraction

    train = [p for p in pairs if not is_val(p[0])]
    val = [p for p in pairs if is_val(p[0])]
    if not train or not val:
        raise ValueError(f"{len(pairs)} pairs cannot be split into train and validation at val_fraction="
                         f"{val_fraction}; use a corpus with more documents or change --val-fraction")
    return train, val


def collate(batch: list[tuple[str, Path, str]], processor: MedVLMProcessor) -> dict[str, torch.Tensor]:
    """Prompt + caption per row, right-padded; labels only on the caption and its end-of-turn token."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_PROMPT}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # Every row shares the prompt, so its length (with <image> expanded) is counted once.
    expanded = prompt.replace(IMAGE_TOKEN, IMAGE_TOKEN * processor.image_seq_length)
    n_prompt = len(processor.tokenizer(expanded, add_special_tokens=False)["input_ids"])
    rows, labels, images = [], [], []
    for _, image, caption in batch:
        full = processor.tokenizer(expanded + caption + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append(full)
        labels.append([-100] * n_prompt + full[n_prompt:])
        images.append(load_rgb(image))
    width = max(len(r) for r in rows)
    pad = processor.tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    label_ids = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    return {"input_ids": input_ids, "attention_mask": attention, "labels": label_ids, "pixel_values": pixels}


@torch.no_grad()
def validation_loss(model: MedVLMForConditionalGeneration, batches: list[dict[str, torch.Tensor]]) -> float:
    model.eval()
    losses = [float(model(**b).loss) for b in batches]
    return sum(losses) / len(losses)


def train_projector(model: MedVLMForConditionalGeneration, processor: MedVLMProcessor, corpus: str | Path,
                    config: AlignConfig = AlignConfig(), progress: bool = True) -> AlignLog:
    """Train `model`'s projector in place; returns the loss log. Everything else stays frozen."""
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    train, val = split_pairs(caption_pairs(corpus), config.val_fraction)
    rng.shuffle(val)
    val_batches = [collate(val[i:i + config.batch_size], processor)
                   for i in range(0, min(len(val), config.val_batches * config.batch_size), config.batch_size)]

    model.requires_grad_(False)
    projector = model.model.multi_modal_projector
    projector.requires_grad_(True)
    optimiser = torch.optim.AdamW(projector.parameters(), lr=config.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=max(total, 1),
                                                   pct_start=0.1)
    log = AlignLog(n_train=len(train), n_val=len(val), config=asdict(config))
    start = time.perf_counter()
    log.val_steps.append(0)
    log.val_loss.append(validation_loss(model, val_batches))
    bar = tqdm(total=total, desc="align projector", disable=not progress)
    step = 0
    while step < total:
        rng.shuffle(train)
        for i in range(0, len(train), config.batch_size):
            if step >= total:
                break
            model.train()
            loss = model(**collate(train[i:i + config.batch_size], processor)).loss
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            log.steps.append(step)
            log.train_loss.append(loss.item())
            if step % config.eval_every == 0 or step == total:
                log.val_steps.append(step)
                log.val_loss.append(validation_loss(model, val_batches))
            bar.update(1)
            bar.set_postfix(loss=f"{log.train_loss[-1]:.3f}", val=f"{log.val_loss[-1]:.3f}")
    bar.close()
    model.requires_grad_(False)
    model.eval()
    log.seconds = time.perf_counter() - start
    return log


def plot_losses(log: AlignLog, path: Path) -> None:
    fig, ax = new_figure()
    ax.plot(log.steps, log.train_loss, label="train", alpha=0.6)
    ax.plot(log.val_steps, log.val_loss, marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("caption loss (nats/token)")
    ax.set_title("Projector alignment")
    ax.legend()
    save_figure(fig, path)


def save_aligned(model: MedVLMForConditionalGeneration, processor: MedVLMProcessor, log: AlignLog,
                 out: str | Path) -> Path:
    """Write the model, processor, loss log and plot into `out` atomically (an old one survives a crash)."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "align_log.json").write_text(json.dumps(asdict(log), indent=1))
        plot_losses(log, tmp / "align_loss.png")

    return atomic_save_dir(Path(out), write)
