"""RAG-PT: DPO with LoRA on the VLM over the preference pairs of `finetune.pairs` (docs/design.md §7).

A thin layer over TRL's DPOTrainer. Three things are ours:

* `EvidencePreferenceCollator`: TRL gives the chosen and the rejected answer the same image. For a
  cross-modality pair the rejected side must keep the *replaced* image, so after TRL's collator has
  built the batch ([chosen rows, rejected rows]) we overwrite the rejected rows' pixel values with
  those of `rejected_images`. Replacements have the original's size (`rag.counterfactual`), so
  their pixel rows line up one for one, for fixed-size and patch-based processors alike.
* The reference model is the same network with the adapter switched off (TRL does this for a PEFT
  model), so the run holds one copy of the weights.
* An SFT anchor: the negative log-likelihood of the chosen answer is added to the DPO loss with
  weight `sft_weight` (TRL's `loss_type=["sigmoid", "sft"]`, the RPO objective of Pang et al., 2024).
  DPO alone can raise the margin by pushing both answers down; on a model that already answers
  (Stage A) the anchor keeps the right answer likely while the wrong one is pushed away.
* `compact_log_probs`: TRL's fused LM head scores only the answer tokens on CUDA/XPU, but on the CPU
  it scores every position of the prompt too (to keep tile shapes fixed for compiled backends). Our
  prompts are ~300 tokens of evidence for a ~5-token answer, so that is most of the head's work and
  memory; switching the compact path on for the CPU halves a DPO step here (41 s -> 22 s at batch 4,
  same losses).

Runs on one CPU, one GPU, or several under `accelerate launch -m rag.cli finetune dpo ...`.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import trl.trainer.utils as trl_utils
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from finetune.lora import TuneSettings, check_targets, lora_config, run_info, run_training, save_results, training_arguments
from finetune.pairs import load_pairs
from rag.scoring import RULE_FILE


class EvidencePreferenceCollator(DataCollatorForVisionPreference):
    """TRL's vision preference collator, plus a separate image for the rejected answer."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        rejected_images = [example.pop("rejected_images", None) for example in examples]
        batch = super().torch_call(examples)
        swapped = [r if r is not None else e.get("images", []) for r, e in zip(rejected_images, examples)]
        if any(r != e.get("images", []) for r, e in zip(swapped, examples)):
            rows = batch["pixel_values"]
            replacement = self.processor.image_processor([img for imgs in swapped for img in imgs],
                                                         return_tensors="pt")["pixel_values"].to(rows.dtype)
            half = rows.shape[0] // 2
            if replacement.shape != rows[half:].shape:
                raise ValueError(f"replaced images give pixel values of shape {tuple(replacement.shape)}, the "
                                 f"originals {tuple(rows[half:].shape)}: a replacement must have its original's size")
            batch["pixel_values"] = torch.cat([rows[:half], replacement])
        return batch


class EvidenceDPOTrainer(DPOTrainer):
    """DPOTrainer that keeps the `rejected_images` column for the collator."""

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if "rejected_images" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "rejected_images"]


@contextlib.contextmanager
def compact_log_probs() -> Iterator[None]:
    """Let TRL's fused LM head score only the labelled (answer) positions on every device."""
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:        # TRL releases before the fused head: nothing to switch
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def train_dpo(base: str | Path, pairs: str | Path, out: str | Path, settings: TuneSettings,
              resume: bool | str = False, device: str | None = None) -> dict[str, Any]:
    """DPO-tune the VLM saved at `base` on `pairs`; write `out/adapter`, `out/merged` and checkpoints."""
    from rag.vlm import load_vlm

    started = time.perf_counter()
    out = Path(out)
    dataset = load_pairs(pairs)
    if len(dataset) == 0:
        raise ValueError(f"{pairs} holds no preference pairs")
    model, processor = load_vlm(base, device)
    check_targets(model, settings)
    losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, settings.sft_weight]} if settings.sft_weight \
        else {"loss_type": ["sigmoid"]}
    args = DPOConfig(**training_arguments(settings, out), beta=settings.beta, remove_unused_columns=True,
                     precompute_ref_log_probs=False, **losses)
    trainer = EvidenceDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                                 peft_config=lora_config(settings),
                                 data_collator=EvidencePreferenceCollator(processor=processor,
                                                                          max_length=settings.max_length))
    with compact_log_probs():
        run_training(trainer, out, resume)
    info = run_info("RAG-PT (DPO, LoRA)", str(base), str(pairs), len(dataset), settings, started)
    info["pair_types"] = dict(sorted(Counter(dataset["pair_type"]).items()))
    result = save_results(trainer, processor, out, info)
    rule = Path(base) / RULE_FILE
    if "merged" in result and rule.is_file():   # the tuned model answers under the rule chosen for its base
        shutil.copy2(rule, Path(result["merged"]) / RULE_FILE)
    return result

