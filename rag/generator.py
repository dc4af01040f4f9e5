"""The generator interface (docs/design.md §5 step 4, §6): one class over any transformers image-text-to-text
model, driven through the model's own processor and chat template.

Backends, named by one string (`create_generator`):

* the default small VLM, `medvlm-smollm2-135m` (built from the offline weights, untrained projector),
  or a saved MedVLM folder such as the output of `medrag finetune align`;
* any Hugging Face image-text-to-text model by id or local path: Qwen2-VL / Qwen2.5-VL,
  SmolVLM / Idefics3, LLaVA. Remote code is never run.

Two ways to answer: `generate` (free text) and `score_options` (the mean log-probability of each
option's tokens after the prompt; the accurate way to answer closed questions with a small model).
"""

from __future__ import annotations

import copy
import inspect
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rag.encoders import ModelNotAvailableError, resolve_device
from rag.prompt import Prompt
from rag.vlm import DEFAULT_VLM, MedVLMConfig, build_default_vlm, cache_argument, cache_dir, cache_of, load_vlm


@dataclass
class Generation:
    text: str
    new_tokens: int
    seconds: float


class Generator:
    """A transformers image-text-to-text model with its processor. Thread-safe: one call at a time."""

    def __init__(self, model: Any, processor: Any, name: str):
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.device = next(model.parameters()).device
        # torch modules and KV caches are not safe to share across threads mid-forward
        self._lock = threading.Lock()

    # --- inputs -------------------------------------------------------------------------------------

    def prompt_text(self, prompt: Prompt) -> str:
        return self.processor.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)

    def encode(self, prompt: Prompt) -> dict[str, torch.Tensor]:
        n_blocks = sum(1 for m in prompt.messages if not isinstance(m["content"], str)
                       for b in m["content"] if b.get("type") == "image")
        if n_blocks != len(prompt.images):
            raise ValueError(f"the prompt has {n_blocks} image block(s) but {len(prompt.images)} image(s)")
        kwargs: dict[str, Any] = {"text": [self.prompt_text(prompt)], "return_tensors": "pt"}
        if prompt.images:
            kwargs["images"] = [prompt.images]  # one list of images per text row: every family accepts this
        encoded = self.processor(**kwargs)
        return {k: v.to(self.device) for k, v in encoded.items() if isinstance(v, torch.Tensor)}

    def _prompt_positions(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The prompt's position ids built the way `generate` builds them, or None where the model takes none.

        A model left to infer positions mid-cache can get them wrong: Qwen2-VL / Qwen2.5-VL keep the
        M-RoPE offset of the last image prompt in `rope_deltas` and, given the full attention mask,
        build positions for the whole sequence rather than the new tokens. Explicit positions (4 rows
        for those models: text + 3D M-RoPE; one row for the others) make the cache continuation match
        a full forward, and building them resets that stored offset for this prompt."""
        prepare = getattr(self.model, "_prepare_position_ids_for_generation", None)
        if prepare is None or "position_ids" not in inspect.signature(self.model.forward).parameters:
            return None
        return prepare(inputs["input_ids"], dict(inputs))

    # --- answering ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompt: Prompt, max_new_tokens: int = 64) -> Generation:
        start = time.perf_counter()
        inputs = self.encode(prompt)
        with self._lock:
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        new = output[0, inputs["input_ids"].shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        return Generation(text=text, new_tokens=int(new.numel()), seconds=time.perf_counter() - start)

    @torch.inference_mode()
    def score_options(self, prompt: Prompt, options: list[str]) -> list[float]:
        """Mean log-probability per token of each option as the answer's continuation.

        The prompt is run once; each option continues from a copy of its KV cache, so k options cost
        one long forward plus k short ones."""
        if not options:
            raise ValueError("score_options needs at least one option")
        inputs = self.encode(prompt)
        with self._lock:
            positions = self._prompt_positions(inputs)
            extra = {} if positions is None else {"position_ids": positions}
            prefill = self.model(**inputs, **extra, use_cache=True)
            first = torch.log_softmax(prefill.logits[0, -1].float(), -1)
            scores = []
            for option in options:
                ids = self.tokenizer(option, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)
                if ids.numel() == 0:
                    raise ValueError(f"option {option!r} is empty after tokenisation")
                total = first[ids[0, 0]].item()
                if ids.shape[1] > 1:
                    mask = torch.ones(1, inputs["input_ids"].shape[1] + ids.shape[1], dtype=torch.long,
                                      device=self.device)
                    # each option continues from its own copy of the prompt's KV cache
                    continued = {cache_argument(self.model): copy.deepcopy(cache_of(prefill))}
                    if positions is not None:  # the option's tokens follow the prompt's last position, as in generate
                        step = torch.arange(1, ids.shape[1] + 1, device=self.device)
                        continued["position_ids"] = positions[..., -1:] + step.view(*[1] * (positions.dim() - 1), -1)
                    out = self.model(input_ids=ids, attention_mask=mask, **continued, use_cache=True)
                    logp = torch.log_softmax(out.logits[0, :-1].float(), -1)
                    total += logp.gather(1, ids[0, 1:, None]).sum().item()
                scores.append(total / ids.shape[1])
        return scores


def _is_medvlm(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == MedVLMConfig.model_type


def default_vlm_dir(progress: bool = True) -> Path:
    """The default VLM saved once as a plain checkpoint, so later loads skip the GGUF and the CNN mapping."""
    from rag.atomic import atomic_save_dir

    target = cache_dir() / DEFAULT_VLM
    if not (target / "config.json").is_file():
        model, processor = build_default_vlm(progress)

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)

        atomic_save_dir(target, write)
    return target


def create_generator(name: str = DEFAULT_VLM, device: str | None = None, dtype: torch.dtype | None = None,
                     progress: bool = True) -> Generator:
    """Resolve a generator by name: the default VLM, a saved MedVLM folder, or a transformers model id/path."""
    device = resolve_device(device)
    if name == DEFAULT_VLM:
        model, processor = load_vlm(default_vlm_dir(progress), device)
        return Generator(model, processor, name)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"{path} has no config.json; pass a saved model folder or a model id")
        if _is_medvlm(path):
            model, processor = load_vlm(path, device)
            return Generator(model, processor, str(path))
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(name))
        model = AutoModelForImageTextToText.from_pretrained(str(name), dtype=dtype or "auto").to(device)
    except (OSError, ValueError) as err:
        raise ModelNotAvailableError(
            f"cannot load generator {name!r}: {err}. Use '{DEFAULT_VLM}' (offline), a local folder, or a Hugging "
            "Face image-text-to-text model id that is in your cache (unset HF_HUB_OFFLINE to download it)") from err
    model.requires_grad_(False)
    return Generator(model, processor, str(name))
