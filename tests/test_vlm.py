"""The default VLM as a transformers model: placeholders, Auto classes, save/load, projector alignment."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from rag.vlm import IMAGE_TOKEN, MedVLMForConditionalGeneration, load_vlm


@pytest.fixture(scope="module")
def tiny(tiny_vlm_dir):
    return load_vlm(tiny_vlm_dir)


def _inputs(processor, image: Image.Image | None, question: str = "Which herb is shown?"):
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": question}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    return processor(text=text, images=[image] if image is not None else None)


def test_image_features_replace_the_placeholder_tokens_in_place(tiny):
    model, processor = tiny
    red, blue = Image.new("RGB", (90, 60), (200, 30, 30)), Image.new("RGB", (90, 60), (30, 30, 200))
    a, b = _inputs(processor, red), _inputs(processor, blue)
    ids = a["input_ids"][0]
    positions = (ids == model.config.image_token_id).nonzero().flatten()
    assert len(positions) == model.config.image_seq_length == 49
    with torch.no_grad():
        base = model.model(**a)
        la, lb = model(**a).logits, model(**b).logits
    # TRL needs hidden states aligned one-to-one with input_ids
    assert base.last_hidden_state.shape[1] == ids.shape[0]
    first = int(positions[0])
    assert torch.allclose(la[0, :first], lb[0, :first])           # causal: text before the image cannot see it
    assert not torch.allclose(la[0, int(positions[-1]) + 1:], lb[0, int(positions[-1]) + 1:])


def test_processor_refuses_a_wrong_number_of_images(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="placeholder"):
        processor(text=f"{IMAGE_TOKEN} {IMAGE_TOKEN} two images", images=[Image.new("RGB", (8, 8))])
    with pytest.raises(ValueError, match="placeholder"):
        processor(text="no image here", images=[Image.new("RGB", (8, 8))])


def test_auto_classes_round_trip_and_frozen_after_load(tiny_vlm_dir, tmp_path):
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    assert isinstance(model, MedVLMForConditionalGeneration)
    # tied LM head, as in SmolLM2
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    model.save_pretrained(tmp_path / "again")
    processor.save_pretrained(tmp_path / "again")
    reloaded, _ = load_vlm(tmp_path / "again")
    for (name, p), q in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(p, q), name
    # from_pretrained marks weights trainable; load_vlm re-freezes them
    assert not any(p.requires_grad for p in reloaded.parameters())
    # BatchNorm of the CNN stays in eval mode even when the model is put in training mode
    reloaded.train()
    assert not reloaded.model.vision_tower.training and reloaded.model.language_model.training


def test_generate_continues_from_the_prompt(tiny):
    model, processor = tiny
    inputs = _inputs(processor, Image.new("RGB", (64, 64), (10, 120, 40)))
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5
    assert torch.equal(out[0, :inputs["input_ids"].shape[1]], inputs["input_ids"][0])


@pytest.mark.slow
def test_align_trains_only_the_projector_and_saves_a_loss_curve(tiny_vlm_dir, small_corpus, tmp_path):
    from finetune.projector import AlignConfig, caption_pairs, save_aligned, split_pairs, train_projector

    model, processor = load_vlm(tiny_vlm_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = train_projector(model, processor, small_corpus / "corpus.jsonl",
                          AlignConfig(batch_size=2, max_steps=3, eval_every=2, val_batches=1, lr=1e-2),
                          progress=False)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("model.multi_modal_projector.") for k in changed)
    assert log.steps == [1, 2, 3] and log.val_steps == [0, 2, 3] and all(map(torch.isfinite, map(torch.tensor,
                                                                                               log.val_loss)))
    out = save_aligned(model, processor, log, tmp_path / "aligned")
    assert (out / "align_loss.png").stat().st_size > 0
    assert json.loads((out / "align_log.json").read_text())["n_train"] == log.n_train
    reloaded, _ = load_vlm(out)
    assert torch.equal(reloaded.model.multi_modal_projector.linear_1.weight, model.model.multi_modal_projector.linear_1.weight)
    # the validation documents never appear in training
    train, val = split_pairs(caption_pairs(small_corpus / "corpus.jsonl"), 0.1)
    assert not {p[0] for p in train} & {p[0] for p in val}


@pytest.mark.slow
def test_default_vlm_is_built_from_the_offline_weights():
    """The GGUF SmolLM2 de-quantised into the composite still knows its facts; the CNN is the ImageNet one."""
    from rag.encoders import EfficientNetLite0Encoder
    from rag.generator import create_generator
    from rag.prompt import build_prompt

    generator = create_generator(progress=False)
    answer = generator.generate(build_prompt("What is the capital of France?", []), max_new_tokens=12)
    assert "Paris" in answer.text
    cnn = EfficientNetLite0Encoder(device="cpu").net.state_dict()
    tower = generator.model.model.vision_tower.state_dict()
    assert all(torch.equal(tower[k], cnn[k]) for k in tower)


def test_image_encoder_moves_its_normalisation_constants_with_the_network():
    """On an H100 `encode` failed because the mean/std buffers stayed on the CPU; "meta" shows it without a GPU."""
    from rag.encoders import EfficientNetLite0Encoder

    encoder = EfficientNetLite0Encoder(device="meta")
    assert {t.device.type for t in [*encoder.parameters(), *encoder.buffers()]} == {"meta"}


def test_retrieval_encoding_folds_batchnorm_without_changing_features_or_the_shared_weights():
    """`encode` runs a copy with BatchNorm folded into the convolutions (faster queries); the features
    match the network's own, and `net` (whose weights the VLM's vision tower copies) is untouched."""
    from PIL import Image

    from rag.encoders import EfficientNetLite0Encoder, weights_fingerprint

    encoder = EfficientNetLite0Encoder(device="cpu")
    before = {k: v.clone() for k, v in encoder.net.state_dict().items()}
    images = [Image.new("RGB", (64, 48), (200, 30, 30)), Image.effect_noise((224, 224), 60).convert("RGB")]
    features = encoder.encode(images)
    with torch.inference_mode():
        grid = encoder.feature_grid(encoder.preprocess(images)).mean(dim=1)
    unfolded = torch.nn.functional.normalize(grid, dim=-1).numpy()
    assert abs(features - unfolded).max() < 1e-4
    folded = encoder.folded_net()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.net.modules()) > 40
    assert encoder.net.state_dict().keys() == before.keys()
    assert all(torch.equal(encoder.net.state_dict()[k], v) for k, v in before.items())
    assert encoder.fingerprint == weights_fingerprint(encoder.name, encoder.net)
    assert encoder.state_dict().keys() == EfficientNetLite0Encoder(device="cpu").state_dict().keys()
