"""The acquisition variation every domain's drawer ends with: pose, zoom, light, focus and noise."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


def photo_variant(img: Image.Image, rng: np.random.Generator, *, max_rotate: float = 25.0,
                  scale: tuple[float, float] = (0.85, 1.15), lighting: tuple[float, float] = (0.8, 1.2),
                  noise_sd: tuple[float, float] = (2.0, 8.0), blur: float = 0.6,
                  fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Shared acquisition variation: rotation, zoom, brightness/contrast, blur and sensor noise.

    Domain drawers render the subject (and their own background) and pass it through here, so
    variants differ the way repeated photographs or scans of one subject do.
    """
    size = img.size
    angle = float(rng.uniform(-max_rotate, max_rotate))
    zoom = float(rng.uniform(*scale))
    out = img.rotate(angle, resample=Image.BILINEAR, fillcolor=fill)
    w, h = int(size[0] * zoom), int(size[1] * zoom)
    out = out.resize((w, h), Image.BILINEAR)
    if zoom >= 1:
        left, top = (w - size[0]) // 2, (h - size[1]) // 2
        out = out.crop((left, top, left + size[0], top + size[1]))
    else:
        canvas = Image.new("RGB", size, fill)
        canvas.paste(out, ((size[0] - w) // 2, (size[1] - h) // 2))
        out = canvas
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(*lighting)))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(*lighting)))
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, blur))))
    arr = np.asarray(out, dtype=np.float32)
    arr = arr + rng.normal(0, float(rng.uniform(*noise_sd)), size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
