"""The generator interface (docs/design.md §5 step 4, §6): one class over any transformers image-text-to-text
model, driven through the model's own processor and chat template.

Backends, named by one string (`create_generator`):

* the default small VLM, `medvlm-smollm2-135m` (built from the offline weights, untrained projector),
  or a saved MedVLM folder such as the output of `medrag finetune align`;
* any Hugging Face image-text-to-text model by id or local path: Qwen2-VL / Qwen2.5-VL,
  SmolVLM / Idefics3, LLaVA. Remote code is never run.

Two ways to answer: `generate` (free text) and `score_options` (each option's log-probability as the
answer's continuation, under the scoring rule of `rag.scoring` chosen for the model; the accurate way
to answer closed questions with a small model).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rag.encoders import ModelNotAvailableError, resolve_device
from rag.prompt import Prompt
from rag.scoring import RULE_FILE, OptionLogProb, ScoringChoice, combine, read_rule
from rag.vlm import DEFAULT_VLM, MedVLMConfig, build_default_vlm, cache_argument, cache_dir, cache_of, load_vlm


RECENT_PROMPTS = 256   # option log-probabilities remembered per generator (a few KB)


@dataclass
class Generation:
    text: str
    new_tokens: int
    seconds: float


class Generator:
    """A transformers image-text-to-text model with its processor. Thread-safe: one call at a time."""

    def __init__(self, model: Any, processor: Any, name: str, scoring: ScoringChoice | None = None):
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.device = next(model.parameters()).device
        # torch modules and KV caches are not safe to share across threads mid-forward
        self._lock = threading.Lock()
        self.scoring = scoring or ScoringChoice()
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._recent: dict[tuple[Any, ...], list[OptionLogProb]] = {}

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
    def option_logprobs(self, prompt: Prompt, options: list[str], cite: int = 0) -> list[OptionLogProb]:
        """The summed log-probability of each option's tokens as the answer's continuation, and with
        `cite` > 0 the log-probability of each evidence number 1..cite written after it as " [n".

        The prompt is run once; its KV cache is then repeated once per option and all options are
        continued in one batch (right-padded, so padding never precedes a real token), so k options
        cost one long forward plus one short batched one; reading the citation adds the " [" tokens
        to each row of that batch, not a pass. Recent results are remembered: calibrated rules score
        the same baseline prompt for many questions (the content-free prompt depends on the options
        only), and an evaluation asks the evidence-free prompt both as a system and as the PMI
        baseline of the others."""
        if not options:
            raise ValueError("scoring needs at least one option")
        key = (self.prompt_text(prompt), tuple(options), cite,
               tuple(hashlib.sha1(image.tobytes()).hexdigest() + str(image.size) for image in prompt.images))
        with self._lock:
            if key in self._recent:
                return self._recent[key]
        scored = self._option_logprobs(prompt, options, cite)
        with self._lock:
            self._recent[key] = scored
            if len(self._recent) > RECENT_PROMPTS:
                self._recent.pop(next(iter(self._recent)))
        return scored

    def _citation_tokens(self, cite: int) -> tuple[list[int], list[int]]:
        """The " [" tokens that open a citation and the token of each number 1..cite that is one token
        (1..9 for every tokenizer here; a number of several tokens cannot be read off one position)."""
        opener = self.tokenizer(" [", add_special_tokens=False)["input_ids"]
        numbers = [self.tokenizer(str(n), add_special_tokens=False)["input_ids"] for n in range(1, cite + 1)]
        return opener, [ids[0] for ids in numbers if len(ids) == 1]

    def _option_logprobs(self, prompt: Prompt, options: list[str], cite: int) -> list[OptionLogProb]:
        ids = [self.tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
        for option, tokens in zip(options, ids):
            if not tokens:
                raise ValueError(f"option {option!r} is empty after tokenisation")
        opener, numbers = self._citation_tokens(cite) if cite else ([], [])
        inputs = self.encode(prompt)
        with self._lock:
            positions = self._prompt_positions(inputs)
            extra = {} if positions is None else {"position_ids": positions}
            if self._keeps_logits:  # only the last position's logits are read from the prefill
                extra["logits_to_keep"] = 1
            prefill = self.model(**inputs, **extra, use_cache=True)
            first = torch.log_softmax(prefill.logits[0, -1].float(), -1)
            totals = [first[tokens[0]].item() for tokens in ids]
            citations: list[tuple[float, ...]] = [()] * len(ids)
            if numbers or max(len(tokens) for tokens in ids) > 1:
                # each row: the option's tokens, then " [" when a citation is read; token j predicts j + 1
                rows = [tokens + opener if numbers else tokens[:-1] for tokens in ids]
                logp = self._continue_options(inputs, positions, cache_of(prefill), rows)
                for row, tokens in enumerate(ids):
                    if len(tokens) > 1:
                        target = torch.tensor(tokens[1:], device=self.device)
                        totals[row] += logp[row, :len(tokens) - 1].gather(1, target[:, None]).sum().item()
                    if numbers:
                        citations[row] = tuple(logp[row, len(rows[row]) - 1, numbers].tolist())
        return [OptionLogProb(total, len(tokens), citation) for total, tokens, citation in zip(totals, ids, citations)]

    def _continue_options(self, inputs: dict[str, torch.Tensor], positions: torch.Tensor | None, cache: Any,
                          rows: list[list[int]]) -> torch.Tensor:
        """Feed every row after the prompt in one batch; the log-probabilities at each fed position."""
        k, width = len(rows), max(1, max(len(r) for r in rows))
        prompt_len = inputs["input_ids"].shape[1]
        feed = torch.full((k, width), self.tokenizer.pad_token_id or 0, dtype=torch.long, device=self.device)
        mask = torch.zeros(k, prompt_len + width, dtype=torch.long, device=self.device)
        mask[:, :prompt_len] = inputs["attention_mask"][0]
        for row, tokens in enumerate(rows):
            feed[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long, device=self.device)
            mask[row, prompt_len:prompt_len + len(tokens)] = 1
        cache.batch_repeat_interleave(k)
        continued: dict[str, Any] = {cache_argument(self.model): cache}
        if positions is not None:  # the options follow the prompt's last position, as in generate
            step = torch.arange(1, width + 1, device=self.device)
            last = positions[..., -1:] + step.view(*[1] * (positions.dim() - 1), -1)
            continued["position_ids"] = last.expand(*positions.shape[:-2], k, width)
        out = self.model(input_ids=feed, attention_mask=mask, **continued, use_cache=True)
        return torch.log_softmax(out.logits.float(), -1)

    def score_options(self, prompt: Prompt, options: list[str], rule: str | None = None,
                      baseline: Prompt | None = None, cite: int = 0) -> list[float]:
        """One score per option under a scoring rule (`rag.scoring`). Default: this model's own choice,
        the rule chosen for the options' kind (`self.scoring.rule_for`) with its yes/no bias.

        Rules that calibrate ("calibrated", "pmi") subtract each option's log-probability under
        `baseline`, the content-free or evidence-free prompt that `rag.scoring.baseline_prompt` builds.
        `cite`: the prompt's evidence count, so that `option_logprobs(prompt, options, cite)` then
        gives the citations from memory."""
        main = self.option_logprobs(prompt, options, cite)
        reference = self.option_logprobs(baseline, options) if baseline is not None else None
        if rule is not None:
            return combine(rule, main, reference)
        return self.scoring.adjust(options, combine(self.scoring.rule_for(options), main, reference))

def _is_medvlm(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == MedVLMConfig.model_type


def default_vlm_dir(progress: bool = True, shipped: bool = True) -> Path:
    """The default VLM saved once as a plain checkpoint, with the shipped projector and adapter
    (`rag.shipped`) merged in, so later loads skip the GGUF, the CNN mapping and the merge. The
    folder is named by the shipped weights' digest: new weights build a new checkpoint.
    `shipped=False` gives the untrained assembly, where reproducing the shipped weights starts."""
    from rag.atomic import atomic_save_dir
    from rag.shipped import SHIPPED_DIR, apply_shipped, shipped_digest

    digest = shipped_digest() if shipped else None
    target = cache_dir() / (f"{DEFAULT_VLM}-{digest}" if digest else DEFAULT_VLM)
    if not (target / "config.json").is_file():
        model, processor = build_default_vlm(progress)
        if digest:
            model = apply_shipped(model)

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            if (SHIPPED_DIR / RULE_FILE).is_file():
                shutil.copy2(SHIPPED_DIR / RULE_FILE, tmp / RULE_FILE)

        atomic_save_dir(target, write)
    return target


def model_folder(name: str) -> Path:
    """The folder of a MedVLM named like a generator: the default's cached checkpoint, or the path itself."""
    return default_vlm_dir() if name == DEFAULT_VLM else Path(name)


def create_generator(name: str = DEFAULT_VLM, device: str | None = None, dtype: torch.dtype | None = None,
                     progress: bool = True) -> Generator:
    """Resolve a generator by name: the default VLM, a saved MedVLM folder, or a transformers model id/path."""
    device = resolve_device(device)
    if name == DEFAULT_VLM:
        folder = default_vlm_dir(progress)
        model, processor = load_vlm(folder, device)
        return Generator(model, processor, name, read_rule(folder))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"{path} has no config.json; pass a saved model folder or a model id")
        if _is_medvlm(path):
            model, processor = load_vlm(path, device)
            return Generator(model, processor, str(path), read_rule(path))
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(name))
        model = AutoModelForImageTextToText.from_pretrained(str(name), dtype=dtype or "auto").to(device)
    except (OSError, ValueError) as err:
        raise ModelNotAvailableError(
            f"cannot load generator {name!r}: {err}. Use '{DEFAULT_VLM}' (offline), a local folder, or a Hugging "
            "Face image-text-to-text model id that is in your cache (unset HF_HUB_OFFLINE to download it)") from err
    model.requires_grad_(False)
    return Generator(model, processor, str(name), read_rule(path) if path.is_dir() else None)
