"""Light heads trained on frozen encoder features at index-build time.

* `DomainRouter`: two linear classifiers, one on image features and one on text features, that
  predict the domain of a query (docs/design.md §5 step 1).
* `Aligner`: two linear projections into a shared space, trained contrastively (symmetric InfoNCE)
  on image–document pairs, so an image can retrieve text (the MMed-RAG retriever idea at CPU cost).
* `ImageWhitening`: the image→image channel's transform, fitted without labels on the corpus images
  (`fit_whitening`): ImageNet features of medical images share a few strong directions (grey scale,
  framing, modality) that swamp what tells one case from another; whitening shrinks them.

The router and aligner train with a held-out validation split and early stopping, and are saved as safetensors.
The loops are ours and short on purpose (nanoGPT style): full-batch features fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


@dataclass
class TrainLog:
    """What a head's training did, kept in the bundle manifest."""

    epochs: int = 0
    best_epoch: int = 0
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_metric: float = 0.0  # accuracy for the router, recall@1 for the aligner
    n_train: int = 0
    n_val: int = 0

    def to_json(self) -> dict:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch, "n_train": self.n_train, "n_val": self.n_val,
                "val_metric": round(self.val_metric, 4),
                "train_loss": [round(x, 4) for x in self.train_loss],
                "val_loss": [round(x, 4) for x in self.val_loss]}


class DomainRouter(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, n_domains: int):
        super().__init__()
        self.image_head = nn.Linear(image_dim, n_domains)
        self.text_head = nn.Linear(text_dim, n_domains)

    def probabilities(self, image_features: np.ndarray | None, text_features: np.ndarray | None) -> np.ndarray:
        """Combine the two heads by adding log-probabilities (independent evidence), then renormalise."""
        with torch.inference_mode():
            logp = 0.0
            if image_features is not None:
                logp = logp + torch.log_softmax(self.image_head(torch.as_tensor(image_features)), -1)
            if text_features is not None:
                logp = logp + torch.log_softmax(self.text_head(torch.as_tensor(text_features)), -1)
            if isinstance(logp, float):
                raise ValueError("routing needs an image, a question, or both")
            return torch.softmax(logp, -1).numpy()


class Aligner(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, joint_dim: int = 256):
        super().__init__()
        self.image_proj = nn.Linear(image_dim, joint_dim)
        self.text_proj = nn.Linear(text_dim, joint_dim)
        # CLIP's learnable temperature, started at 1/0.07
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.image_proj(x), dim=-1)

    def embed_texts(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.text_proj(x), dim=-1)

    def project_images(self, features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.embed_images(torch.as_tensor(features)).numpy().astype(np.float32)

    def project_texts(self, features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.embed_texts(torch.as_tensor(features)).numpy().astype(np.float32)


def _holdout(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    n_val = max(1, int(round(n * fraction))) if n >= 10 else 0
    return order[n_val:], order[:n_val]


def _early_stopping_loop(step, evaluate, module: nn.Module, max_epochs: int, patience: int, log: TrainLog,
                         desc: str, progress: bool) -> None:
    """Run epochs until the validation loss stops improving; restore the best weights."""
    best = (float("inf"), None)
    bad = 0
    for epoch in tqdm(range(max_epochs), desc=desc, disable=not progress, unit="epoch"):
        log.train_loss.append(step())
        val_loss, metric = evaluate()
        log.val_loss.append(val_loss)
        log.epochs = epoch + 1
        if val_loss < best[0] - 1e-4:
            best = (val_loss, {k: v.clone() for k, v in module.state_dict().items()})
            log.best_epoch, log.val_metric, bad = epoch + 1, metric, 0
        else:
            bad += 1
            if bad >= patience:
                break
    if best[1] is not None:
        module.load_state_dict(best[1])


def train_router(image_x: np.ndarray, image_y: np.ndarray, text_x: np.ndarray, text_y: np.ndarray, n_domains: int,
                 seed: int = 0, max_epochs: int = 300, patience: int = 20, lr: float = 1e-2,
                 progress: bool = False) -> tuple[DomainRouter, dict[str, TrainLog]]:
    """Train both router heads (full batch, AdamW, weight decay) with early stopping on a held-out split."""
    torch.manual_seed(seed)
    router = DomainRouter(image_x.shape[1], text_x.shape[1], n_domains)
    logs = {}
    for name, head, x, y in (("image", router.image_head, image_x, image_y), ("text", router.text_head, text_x, text_y)):
        rng = np.random.default_rng(seed)
        tr, va = _holdout(len(x), 0.15, rng)
        xt, yt = torch.as_tensor(x), torch.as_tensor(y, dtype=torch.long)
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-3)
        # Balance domains: TCM herbs outnumber tongues, and routing must not favour the big domain.
        counts = np.bincount(y[tr], minlength=n_domains).astype(np.float32)
        weights = torch.as_tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_domains, 0.0))
        loss_fn = nn.CrossEntropyLoss(weight=weights.float())
        log = TrainLog(n_train=len(tr), n_val=len(va))
        eval_idx = va if len(va) else tr

        def step() -> float:
            head.train()
            opt.zero_grad()
            loss = loss_fn(head(xt[tr]), yt[tr])
            loss.backward()
            opt.step()
            return loss.item()

        def evaluate() -> tuple[float, float]:
            with torch.no_grad():
                logits = head(xt[eval_idx])
                return float(loss_fn(logits, yt[eval_idx])), float((logits.argmax(-1) == yt[eval_idx]).float().mean())

        _early_stopping_loop(step, evaluate, head, max_epochs, patience, log, f"router ({name})", progress)
        logs[name] = log
    return router, logs


def _info_nce(aligner: Aligner, img: torch.Tensor, txt: torch.Tensor, pair_doc: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch's distinct documents; several images of one document share a target."""
    docs, inverse = torch.unique(pair_doc, return_inverse=True)
    zi = aligner.embed_images(img)
    zt = aligner.embed_texts(txt[docs])
    logits = aligner.logit_scale.exp().clamp(max=100) * zi @ zt.T
    image_to_text = nn.functional.cross_entropy(logits, inverse)
    # text -> image: each document's positives are all of its images; average their log-probabilities
    logp = torch.log_softmax(logits.T, dim=-1)
    positives = nn.functional.one_hot(inverse, len(docs)).T.float()
    text_to_image = -(logp * positives).sum(-1) / positives.sum(-1)
    return (image_to_text + text_to_image.mean()) / 2


def train_aligner(image_x: np.ndarray, image_doc: np.ndarray, doc_text_x: np.ndarray, joint_dim: int = 256,
                  seed: int = 0, max_epochs: int = 200, patience: int = 15, lr: float = 3e-3,
                  batch_size: int = 256, progress: bool = False) -> tuple[Aligner, TrainLog]:
    """Contrastive training on (image, document text) pairs.

    Validation holds out whole images (not documents): at query time the question image is a new
    view of a case whose document is in the index, which is exactly what held-out images test.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    aligner = Aligner(image_x.shape[1], doc_text_x.shape[1], joint_dim)
    if not len(image_x):
        # A text-only corpus has no (image, text) pair to learn from: the aligner stays as initialised and
        # its log says it saw nothing (n_train 0), so `index info` shows that image->text search is untrained.
        return aligner, TrainLog()
    img, txt = torch.as_tensor(image_x), torch.as_tensor(doc_text_x)
    pair_doc = torch.as_tensor(image_doc, dtype=torch.long)
    tr, va = _holdout(len(img), 0.15, rng)
    opt = torch.optim.AdamW(aligner.parameters(), lr=lr, weight_decay=1e-4)
    log = TrainLog(n_train=len(tr), n_val=len(va))
    eval_idx = va if len(va) else tr

    def step() -> float:
        aligner.train()
        losses = []
        order = rng.permutation(tr)
        for start in range(0, len(order), batch_size):
            batch = torch.as_tensor(order[start:start + batch_size])
            opt.zero_grad()
            loss = _info_nce(aligner, img[batch], txt, pair_doc[batch])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            idx = torch.as_tensor(eval_idx)
            loss = float(_info_nce(aligner, img[idx], txt, pair_doc[idx]))
            # recall@1 against every document, the retrieval the index will actually do
            scores = aligner.embed_images(img[idx]) @ aligner.embed_texts(txt).T
            recall = float((scores.argmax(-1) == pair_doc[idx]).float().mean())
        return loss, recall

    _early_stopping_loop(step, evaluate, aligner, max_epochs, patience, log, "aligner", progress)
    return aligner, log


WHITENING_MIN_IMAGES = 50      # fewer images give too rough a covariance: the transform stays the identity
WHITENING_COMPONENTS = 256     # leading directions whitened one by one; the rest share one scale


class ImageWhitening:
    """Shrinkage whitening of image features: x ↦ normalise((C + λ̄I)^(-1/2) (x − μ)), with C the corpus
    images' covariance and λ̄ its mean eigenvalue, on the leading components (the rest, near λ̄'s floor,
    are scaled by λ̄^(-1/2)). Shrinking halfway to λ̄ keeps the many small, noisy directions from being
    blown up, which plain PCA whitening does. Measured on held-out image → case retrieval
    (benchmarks/results/retrieval.md): MedPix 0.568 → 0.636 R@1, COVID-CXR 0.221 → 0.260, sample
    0.824 → 0.828, sample documents added later 0.719 → 0.933 (transform fitted before they came)."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, scales: np.ndarray, residual: float):
        self.mean, self.components = mean.astype(np.float32), components.astype(np.float32)
        self.scales, self.residual = scales.astype(np.float32), float(residual)

    @classmethod
    def identity(cls, dim: int) -> ImageWhitening:
        return cls(np.zeros(dim), np.zeros((0, dim)), np.zeros(0), 1.0)

    @property
    def fitted(self) -> bool:
        return len(self.scales) > 0

    def apply(self, features: np.ndarray) -> np.ndarray:
        """(n, d) features → (n, d) whitened, L2-normalised (the identity keeps them as they are)."""
        if not self.fitted:
            return features
        x = features.astype(np.float32) - self.mean
        projected = x @ self.components.T
        out = (projected * self.scales) @ self.components + (x - projected @ self.components) * self.residual
        return (out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": torch.from_numpy(self.mean), "components": torch.from_numpy(self.components),
                "scales": torch.from_numpy(self.scales), "residual": torch.tensor([self.residual])}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], dim: int) -> ImageWhitening:
        """From `state_dict()`'s tensors; a bundle saved before whitening existed has none: the identity."""
        if not state:
            return cls.identity(dim)
        return cls(state["mean"].numpy(), state["components"].numpy(), state["scales"].numpy(),
                   float(state["residual"][0]))

    def describe(self) -> dict[str, int | bool]:
        return {"fitted": self.fitted, "components": int(len(self.scales))}


def fit_whitening(images: np.ndarray, dim: int) -> ImageWhitening:
    """`ImageWhitening` fitted on the corpus image features (n, dim); the identity below
    WHITENING_MIN_IMAGES images."""
    if len(images) < WHITENING_MIN_IMAGES:
        return ImageWhitening.identity(dim)
    mean = images.mean(0)
    centred = (images - mean).astype(np.float64)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    eigen = singular ** 2 / len(images)
    floor = eigen.sum() / dim                         # λ̄: the covariance's mean eigenvalue
    k = min(WHITENING_COMPONENTS, int((eigen > 1e-12).sum()))
    return ImageWhitening(mean, vt[:k], 1 / np.sqrt(eigen[:k] + floor), 1 / np.sqrt(floor))
