"""The generator interface over tiny random models of the transformers families it names.

Each family (Qwen2-VL, Qwen2.5-VL, Idefics3, LLaVA) is built here from a small config, with a
byte-level BPE tokenizer trained locally on a few hundred words and the family's own processor
class, saved with `save_pretrained` and loaded back through `create_generator(path)`: the real
AutoProcessor / AutoModelForImageTextToText path, no remote code, no network.

Random weights make the generated text gibberish; what is checked is that every family runs end to
end with and without an image, and that `score_options` (one prefill, then each option continued
from a copy of the KV cache) gives the same numbers as a plain full forward of prompt + option.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from rag.generator import Generator, Prompt, create_generator
from rag.prompt import EvidenceText, build_prompt

HIDDEN = 64
INIT = 0.2  # far above the usual 0.02: peaked, position-sensitive logits make cache errors visible
CORPUS = """
You are a careful medical assistant. Answer the question using the numbered evidence and cite the
items you used. If the evidence does not answer the question, say so. Answer the question briefly.
Evidence Question Options Answer with the text of one option and cite the evidence.
The tongue is pale with a thin white coating, which suggests a deficiency pattern in traditional
Chinese medicine. A red tongue with a yellow greasy coating points to damp heat. A purple tongue
suggests blood stasis. The chest radiograph shows a right lower lobe consolidation consistent with
pneumonia; there is no pleural effusion and the cardiac silhouette is normal. A pneumothorax shows
a visible pleural line with no lung markings beyond it. Fundus photography of diabetic retinopathy
shows microaneurysms, dot and blot hemorrhages, hard exudates and cotton wool spots; proliferative
disease adds neovascularisation of the disc. Glaucoma enlarges the cup to disc ratio. Histology of
an adenocarcinoma shows glands lined by atypical columnar cells with mitoses and invasion of the
stroma; a benign adenoma keeps its architecture. Ginseng root is used to tonify qi; licorice root
harmonises formulas; ginger warms the middle. Which finding is most likely? What does the image
show? The answer is pneumonia, effusion, normal, hemorrhage, exudate, consolidation, stasis, heat.
Patients with fever, cough and sputum often have an infection of the lung. Cardiomegaly means an
enlarged heart on the radiograph. Macular edema thickens the retina near the fovea.
""" * 3


# --- tokenizer ----------------------------------------------------------------------------------------

def tiny_tokenizer(special_tokens: list[str], eos: str, pad: str, **named: str):
    """A byte-level BPE tokenizer trained on CORPUS, with the family's special tokens in its vocab."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad,
                                   additional_special_tokens=[t for t in special_tokens if t not in (eos, pad)],
                                   **named)


def chat_template(image: str, start: str, end: str, assistant: str) -> str:
    """A small Jinja chat template: list-of-blocks (or string) content, `image` for each image block."""
    return (
        "{% for message in messages %}"
        "{{ '" + start + "' + message['role'] + ': ' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for block in message['content'] %}"
        "{% if block['type'] == 'image' %}{{ '" + image + "' }}"
        "{% elif block['type'] == 'text' %}{{ block['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '" + end + "' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '" + assistant + "' }}{% endif %}"
    )


def text_config(tokenizer, **extra) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048, initializer_range=INIT,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.eos_token_id, **extra)


# --- families ---------------------------------------------------------------------------------------

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]


def _qwen_processor():
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    tokenizer = tiny_tokenizer(QWEN_SPECIAL, eos="<|im_end|>", pad="<|endoftext|>")
    size = {"shortest_edge": 56 * 56, "longest_edge": 56 * 56}  # any image -> 4x4 patches -> 4 tokens
    image_processor = Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    template = chat_template("<|vision_start|><|image_pad|><|vision_end|>", "<|im_start|>", "<|im_end|>\\n",
                             "<|im_start|>assistant: ")
    return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                            chat_template=template)


def _qwen_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def build_qwen2_vl():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    processor = _qwen_processor()
    tok = processor.tokenizer
    config = Qwen2VLConfig(
        text_config=text_config(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "mrope_section": [4, 6, 6]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        **_qwen_ids(tok))
    return Qwen2VLForConditionalGeneration(config), processor


def build_qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    base = _qwen_processor()
    processor = Qwen2_5_VLProcessor(image_processor=base.image_processor, tokenizer=base.tokenizer,
                                    video_processor=base.video_processor, chat_template=base.chat_template)
    tok = processor.tokenizer
    config = Qwen2_5_VLConfig(
        text_config=text_config(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "mrope_section": [4, 6, 6]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=HIDDEN, num_heads=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=28,
                           fullatt_block_indexes=[1]),
        **_qwen_ids(tok))
    return Qwen2_5_VLForConditionalGeneration(config), processor


def build_idefics3():
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor)

    rows_cols = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tokenizer = tiny_tokenizer(["<|endoftext|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                                "<global-img>", *rows_cols], eos="<end_of_utterance>", pad="<|endoftext|>")
    image_size, patch, scale = 32, 8, 2  # (32/8)^2 = 16 patches, pixel-shuffled by 2 -> 4 image tokens
    image_processor = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": image_size},
                                             max_image_size={"longest_edge": image_size})
    template = chat_template("<image>", "", "<end_of_utterance>\\n", "assistant:")
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=(image_size // patch) ** 2 // scale ** 2, chat_template=template)
    tok = processor.tokenizer
    config = Idefics3Config(
        text_config=dict(model_type="llama", **text_config(tok)),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=patch),
        scale_factor=scale, image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    return Idefics3ForConditionalGeneration(config), processor


def build_llava():
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = tiny_tokenizer(["<|endoftext|>", "</s>", "<image>"], eos="</s>", pad="<|endoftext|>")
    image_size, patch = 32, 8  # 16 patches + CLS; the "default" strategy drops CLS -> 16 image tokens
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    template = chat_template("<image>\\n", "", "\\n", "assistant:")
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=template)
    tok = processor.tokenizer
    config = LlavaConfig(
        text_config=dict(model_type="llama", **text_config(tok)),
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=image_size, patch_size=patch, projection_dim=32),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1, projector_hidden_act="gelu")
    return LlavaForConditionalGeneration(config), processor


FAMILIES = {"qwen2_vl": build_qwen2_vl, "qwen2_5_vl": build_qwen2_5_vl, "idefics3": build_idefics3,
            "llava": build_llava}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared CPU: one intra-op thread is ~50x faster than contended spinning threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def generator(request, tmp_path_factory) -> Generator:
    torch.manual_seed(0)
    model, processor = FAMILIES[request.param]()
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    gen = create_generator(str(path), device="cpu")
    assert type(gen.model) is type(model)
    assert type(gen.processor) is type(processor)
    return gen


# --- prompts ----------------------------------------------------------------------------------------

EVIDENCE = [EvidenceText(1, "Chest radiograph", "A right lower lobe consolidation is consistent with pneumonia."),
            EvidenceText(2, "Effusion", "A pleural effusion blunts the costophrenic angle.")]
OPTIONS = ["pneumonia", "pleural effusion", "a normal cardiac silhouette", "e"]


def image(seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy())


def image_prompt() -> Prompt:
    return build_prompt("What does the chest radiograph show?", EVIDENCE, image(), OPTIONS)


def text_prompt() -> Prompt:
    return build_prompt("Which finding is most likely?", [], None, OPTIONS)


def _continuation_logp(gen: Generator, prompt: Prompt, continuation: list[int]) -> torch.Tensor:
    """Log-probabilities at each continuation position (the row predicting the token after it) from
    one plain forward of prompt + continuation, no cache."""
    text = gen.processor.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)
    kwargs = {"text": [text], "return_tensors": "pt"}
    if prompt.images:
        kwargs["images"] = [prompt.images]
    inputs = dict(gen.processor(**kwargs))
    n_prompt = inputs["input_ids"].shape[1]
    ids = torch.tensor([continuation])
    full = dict(inputs)
    full["input_ids"] = torch.cat([inputs["input_ids"], ids], 1)
    full["attention_mask"] = torch.ones_like(full["input_ids"])
    if "mm_token_type_ids" in inputs:  # the continuation is text
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ids)], 1)
    with torch.no_grad():
        logits = gen.model(**full, use_cache=False).logits[0].float()
    return torch.log_softmax(logits[n_prompt - 1:], -1)


def reference_scores(gen: Generator, prompt: Prompt, options: list[str]) -> list[float]:
    """Mean log-probability of each option's tokens from one plain forward of prompt + option."""
    scores = []
    for option in options:
        ids = gen.tokenizer.encode(option, add_special_tokens=False)
        logp = _continuation_logp(gen, prompt, ids)[:-1].gather(1, torch.tensor(ids)[:, None])
        scores.append(logp.mean().item())
    return scores


def reference_citations(gen: Generator, prompt: Prompt, options: list[str], n: int) -> list[list[float]]:
    """Log-probability of each number 1..n after "<option> [", from one plain forward each."""
    opener = gen.tokenizer.encode(" [", add_special_tokens=False)
    numbers = [gen.tokenizer.encode(str(i), add_special_tokens=False)[0] for i in range(1, n + 1)]
    return [_continuation_logp(gen, prompt, gen.tokenizer.encode(o, add_special_tokens=False) + opener)[-1, numbers]
            .tolist() for o in options]


# --- tests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text"])
def test_generate(generator: Generator, with_image: bool):
    prompt = image_prompt() if with_image else text_prompt()
    out = generator.generate(prompt, max_new_tokens=5)
    assert isinstance(out.text, str)
    assert 0 < out.new_tokens <= 5
    assert out.seconds >= 0


def test_image_prompt_reaches_the_model(generator: Generator):
    """The image is encoded and changes the answer distribution: the processor got it in the right nesting."""
    first = generator.score_options(image_prompt(), OPTIONS)
    other = build_prompt("What does the chest radiograph show?", EVIDENCE, image(seed=1), OPTIONS)
    second = generator.score_options(other, OPTIONS)
    assert max(abs(a - b) for a, b in zip(first, second)) > 1e-6


def test_score_options_matches_full_forward(generator: Generator):
    # multi-token options exercise the cache continuation, the single-token one the prefill alone
    lengths = [len(generator.tokenizer.encode(o, add_special_tokens=False)) for o in OPTIONS]
    assert max(lengths) >= 3 and min(lengths) == 1, lengths
    # image, then text, then image again: state a model keeps between calls (Qwen's M-RoPE deltas)
    # must not leak from one prompt into the next
    # (another image in the third prompt: the generator remembers recent prompts and would not rerun the first)
    third = build_prompt("What does the chest radiograph show?", EVIDENCE, image(seed=1), OPTIONS)
    for prompt in (image_prompt(), text_prompt(), third):
        scores = generator.score_options(prompt, OPTIONS)
        assert len(scores) == len(OPTIONS)
        assert all(isinstance(s, float) and math.isfinite(s) and s < 0 for s in scores)
        expected = reference_scores(generator, prompt, OPTIONS)
        assert scores == pytest.approx(expected, abs=1e-4), (scores, expected)


def test_citation_after_each_option_matches_full_forward(generator: Generator):
    """The evidence number the model would write after each option, read in the same batch as the options."""
    for prompt in (image_prompt(), text_prompt()):
        scored = generator.option_logprobs(prompt, OPTIONS, cite=3)
        expected = reference_citations(generator, prompt, OPTIONS, 3)
        for option, want in zip(scored, expected):
            assert len(option.citation) == 3
            assert list(option.citation) == pytest.approx(want, abs=1e-4)
        # asking for the citation leaves the options' own scores as they were
        assert [o.total for o in scored] == pytest.approx([o.total for o in generator.option_logprobs(prompt, OPTIONS)],
                                                          abs=1e-4)


def test_image_block_without_image_is_rejected(generator: Generator):
    prompt = image_prompt()
    with pytest.raises(ValueError, match="image block"):
        generator.score_options(Prompt(messages=prompt.messages, images=[]), OPTIONS)
    with pytest.raises(ValueError, match="image block"):
        generator.generate(Prompt(messages=prompt.messages, images=[]), max_new_tokens=2)
    text = text_prompt()
    with pytest.raises(ValueError, match="image block"):
        generator.generate(Prompt(messages=text.messages, images=[image()]), max_new_tokens=2)
