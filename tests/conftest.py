"""Shared fixtures: a small sample corpus and an index built from it with the offline default encoders.

Built once per test session (two domains, one corpus image and one query image per case) so the
suite stays fast while exercising the real build path: validation, embedding, head training,
calibration and the atomic bundle write.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SMALL_DOMAINS = ("tcm_tongue", "radiology")


@pytest.fixture(scope="session")
def load_benchmark():
    """Loads benchmarks/NAME.py as a module, by path: benchmarks/ is a folder of scripts, not a package."""
    import importlib.util

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    from sample_corpus.build import build_sample_corpus

    out = tmp_path_factory.mktemp("sample") / "corpus"
    build_sample_corpus(out, seed=0, images_per_doc=2, query_images_per_doc=1, domains=SMALL_DOMAINS, progress=False)
    return out


@pytest.fixture(scope="session")
def encoders():
    from rag.encoders import create_image_encoder, create_text_encoder

    return create_text_encoder(), create_image_encoder()


@pytest.fixture(scope="session")
def small_index(small_corpus: Path, encoders, tmp_path_factory) -> Path:
    from rag.index_build import build_index

    out = tmp_path_factory.mktemp("index") / "small"
    text, image = encoders
    build_index(small_corpus / "corpus.jsonl", out, qa=small_corpus / "qa.jsonl", progress=False,
                text_encoder=text, image_encoder=image)
    return out



def tiny_tokenizer(texts: list[str], special: list[str]):
    """A word-level fast tokenizer trained locally on `texts` (no hub): enough vocabulary for prompts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", *special], vocab_size=3000))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", additional_special_tokens=[s for s in special])


@pytest.fixture(scope="session")
def tiny_vlm_dir(small_corpus: Path, tmp_path_factory) -> Path:
    """A MedVLM with a 2-layer random Llama and a locally trained tokenizer, saved with save_pretrained."""
    import json

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rag.prompt import SYSTEM, SYSTEM_NO_EVIDENCE
    from rag.vlm import build_vlm

    texts = [json.loads(line)["text"] + " " + json.loads(line)["title"]
             for line in (small_corpus / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    texts += [json.loads(line)["question"] + " " + " ".join(json.loads(line).get("options") or [])
              for line in (small_corpus / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    texts += [SYSTEM, SYSTEM_NO_EVIDENCE, "system user assistant Evidence Question Options Answer A B C D [1] [2]"]
    tokenizer = tiny_tokenizer(texts, ["<|im_start|>", "<|im_end|>"])
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=4096, tie_word_embeddings=True,
                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    model, processor = build_vlm(lm, tokenizer)
    out = tmp_path_factory.mktemp("tiny-vlm") / "medvlm"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
