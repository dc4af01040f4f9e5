"""Uploaded images, checked before the model sees them.

An upload is refused (`ApiError`) when it is larger than `max_bytes` (413), when its content is not
one of the image formats below, whatever its filename or declared type says (415), when its
header declares more than `max_pixels` pixels (413: a decompression bomb, e.g. a 50 kB PNG that
expands to 40 000 x 40 000, is caught from the header before any pixel is decoded), or when it is
damaged (422). Only then is it decoded, to RGB.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from rag.serve.errors import ApiError

# What medical images arrive as, and what Pillow decodes safely; sniffed from the bytes.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG covers MPO (camera JPEGs with a preview)
MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 25_000_000  # 5000 x 5000; scans larger than this are resized before upload


def _openable() -> list[str]:
    """FORMATS this Pillow build can open (WebP needs libwebp); naming one it lacks raises KeyError."""
    Image.init()  # registers every plugin the first time, returns at once after
    return [f for f in FORMATS if f in Image.OPEN]


def read_image(data: bytes, field: str = "image", max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The upload `data` decoded to RGB, or an ApiError naming `field` and what is wrong with it."""
    if not data:
        raise ApiError(422, f"{field}: the uploaded file is empty", field)
    if len(data) > max_bytes:
        raise ApiError(413, f"{field}: {len(data)} bytes is over the limit of {max_bytes} bytes", field)
    try:
        with warnings.catch_warnings():
            # Pillow warns (and above twice its own limit, raises) on huge headers; our limit is lower
            # and is checked below, so its warning would only repeat it on the console.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_openable())
    except Image.DecompressionBombError:
        raise ApiError(413, f"{field}: the image declares too many pixels (limit {max_pixels})", field) from None
    except UnidentifiedImageError:
        raise ApiError(415, f"{field}: the content is not an image in a supported format "
                            f"({', '.join(FORMATS)})", field) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(413, f"{field}: {width}x{height} pixels is over the limit of {max_pixels} pixels", field)
    try:
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data behind a valid header
        raise ApiError(422, f"{field}: the {image.format} image is damaged ({exc})", field) from None
