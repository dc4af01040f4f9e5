"""What RAG-PT (DPO) and the knowledge-SFT baseline share: settings, LoRA on the language model only,
TRL training arguments, resuming, and saving an adapter plus a merged model.

LoRA goes on the decoder's attention and MLP projections only, chosen by a regular expression over
module names (docs/design.md §6): the vision tower and the projector stay as aligned, and a model that
names its decoder `language_model` (MedVLM, LLaVA, Qwen2-VL) or `text_model` (Idefics3 / SmolVLM)
gets the same targets. The LM head is never a target (TRL's fused log-prob head reads its weight
directly and would never train an adapter there).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer_callback import ProgressCallback

from rag.reporting import new_figure, now, save_figure

LM_LORA_TARGETS = (r".*(language_model|text_model)\.layers\.\d+\."
                   r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))")


@dataclass
class TuneSettings:
    """Hyper-parameters of one LoRA run, from a YAML/JSON file and/or command-line flags."""

    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1               # > 0 stops early (short CPU runs)
    batch_size: int = 4
    grad_accum: int = 1
    beta: float = 0.1                 # DPO only: strength of the pull towards the reference
    sft_weight: float = 1.0           # DPO only: weight of the SFT anchor on the chosen answer (0: none)
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = LM_LORA_TARGETS
    max_length: int = 2048            # tokens per prompt + answer; the 49 image tokens sit inside the prompt
    save_steps: int = 25              # checkpoint every n steps (what --resume continues from)
    logging_steps: int = 1
    warmup_ratio: float = 0.1         # share of the steps spent warming the learning rate up
    seed: int = 0
    gradient_checkpointing: bool = False

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> "TuneSettings":
        """Settings from a YAML/JSON file, then `overrides` (flags left unset are None and ignored)."""
        values: dict[str, Any] = {}
        if path is not None:
            import yaml

            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"training config {path} not found")
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"training config {path} must be a mapping of setting: value")
            values.update(loaded)
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}{f' in {path}' if path else ''}; "
                             f"known: {sorted(known)}")
        settings = cls(**values)
        re.compile(settings.lora_targets)  # a bad pattern fails here, not deep inside PEFT
        if settings.learning_rate <= 0 or settings.batch_size < 1 or settings.lora_rank < 1:
            raise ValueError("learning_rate must be > 0, batch_size and lora_rank >= 1")
        if settings.beta <= 0 or settings.sft_weight < 0:
            raise ValueError(f"beta must be > 0 and sft_weight >= 0, got beta={settings.beta}, "
                             f"sft_weight={settings.sft_weight}")
        return settings


def lora_config(settings: TuneSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=settings.lora_targets, bias="none", task_type="CAUSAL_LM")


def check_targets(model: torch.nn.Module, settings: TuneSettings) -> list[str]:
    """The module names the LoRA pattern matches; an error naming the pattern if none (or a non-decoder one) does."""
    pattern = re.compile(settings.lora_targets)
    matched = [name for name, module in model.named_modules()
               if pattern.fullmatch(name) and isinstance(module, torch.nn.Linear)]
    if not matched:
        raise ValueError(f"the LoRA target pattern {settings.lora_targets!r} matches no linear layer of this model; "
                         "pass --lora-targets with a pattern over its decoder's module names")
    outside = [n for n in matched if "vision" in n or "projector" in n or "lm_head" in n]
    if outside:
        raise ValueError(f"LoRA targets must stay in the language model; {settings.lora_targets!r} also matches "
                         f"{outside[:3]}")
    return matched


# transformers 5.2x renamed gradient checkpointing to activation checkpointing and warns on the old name.
_CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                  else "gradient_checkpointing")
# TRL asks the model for `is_gradient_checkpointing`, which transformers 5.2x deprecates: the call is
# TRL's, so the warning says nothing our users can act on.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def training_arguments(settings: TuneSettings, out: Path) -> dict[str, Any]:
    """Keyword arguments shared by TRL's DPOConfig and SFTConfig."""
    cuda = torch.cuda.is_available()
    return dict(output_dir=str(out / "checkpoints"), learning_rate=settings.learning_rate,
                num_train_epochs=settings.epochs, max_steps=settings.max_steps,
                per_device_train_batch_size=settings.batch_size, gradient_accumulation_steps=settings.grad_accum,
                logging_steps=settings.logging_steps, save_strategy="steps", save_steps=settings.save_steps,
                save_total_limit=2, warmup_steps=settings.warmup_ratio,  # below 1: a fraction of all steps
                seed=settings.seed,
                bf16=cuda and torch.cuda.is_bf16_supported(), report_to="none",
                max_length=settings.max_length, dataloader_num_workers=0, dataloader_pin_memory=cuda,
                disable_tqdm=False, **{_CHECKPOINTING: settings.gradient_checkpointing})


class LossBar(ProgressCallback):
    """Transformers' training bar, with the latest loss as its postfix: the stock one prints every log
    (a dict of a dozen figures at each step, with logging_steps=1) under the bar. The figures still
    reach `trainer.state.log_history`, the training log and its plot."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{float(logs['loss']):.4g}", refresh=False)


def run_training(trainer: Any, out: Path, resume: bool | str) -> None:
    """Train (resuming as `resume_point` says) under one quiet progress bar."""
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LossBar)
    trainer.train(resume_from_checkpoint=resume_point(out, resume))


def resume_point(out: Path, resume: bool | str) -> str | bool | None:
    """What to pass to `Trainer.train(resume_from_checkpoint=...)`: a path, the latest checkpoint, or None."""
    if not resume:
        return None
    if isinstance(resume, str) and resume not in ("latest", "true"):
        if not Path(resume).is_dir():
            raise FileNotFoundError(f"checkpoint {resume} not found")
        return resume
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        raise FileNotFoundError(f"--resume: no checkpoint under {out / 'checkpoints'}; run without --resume first")
    return str(checkpoints[-1])


def save_results(trainer: Any, processor: Any, out: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Save `out/adapter` (LoRA only), `out/merged` (a full model any generator loads) and the training log;
    return their paths, the loss plot's, and `info` completed with the step count and loss history.

    Each folder is written beside its target and renamed into place, so a run that fails here
    leaves the previous adapter and merged model intact. Only the main process writes."""
    from rag.atomic import atomic_save_dir

    if not trainer.accelerator.is_main_process:
        return {"info": info}
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    history = [h for h in trainer.state.log_history if "loss" in h]
    info = {**info, "steps": trainer.state.global_step, "history": history}
    log = json.dumps(info, indent=1, default=str) + "\n"

    def write_adapter(tmp: Path) -> None:
        peft_model.save_pretrained(tmp)
        (tmp / "train_log.json").write_text(log, encoding="utf-8")

    adapter = atomic_save_dir(out / "adapter", write_adapter)
    merged_model = peft_model.merge_and_unload()  # folds the LoRA deltas into the base weights in place
    merged_model.requires_grad_(False)

    def write_merged(tmp: Path) -> None:
        merged_model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "train_log.json").write_text(log, encoding="utf-8")

    merged = atomic_save_dir(out / "merged", write_merged)
    plot = out / "train_loss.png"
    plot_history(history, plot, info.get("title", "training"))
    return {"adapter": adapter, "merged": merged, "plot": plot, "info": info}


def plot_history(history: list[dict[str, Any]], path: Path, title: str) -> None:
    fig, ax = new_figure()
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], label="loss")
    for key in ("rewards/accuracies", "rewards/margins"):
        if history and key in history[0]:
            ax.plot(steps, [h.get(key) for h in history], label=key, alpha=0.7)
    ax.set(xlabel="step", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def run_info(title: str, base: str, data: str, n_examples: int, settings: TuneSettings,
             started: float) -> dict[str, Any]:
    return {"title": title, "base": base, "data": data, "examples": n_examples, "settings": asdict(settings),
            "seconds": round(time.perf_counter() - started, 1), "date": now()}
