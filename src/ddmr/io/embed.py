"""Images embedded in self-contained HTML pages (the report, the QC pages): encoded
arrays and ``data:`` URIs, so that a page needs no other file and no network."""

from __future__ import annotations

import base64
import io

import numpy as np


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data`` as a base64 ``data:`` URI of type ``mime``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def encode_image(pixels: np.ndarray, kind: str = "png", quality: int = 85) -> bytes:
    """A (rows, columns) grey or (rows, columns, 3) RGB uint8 array as PNG or JPEG
    (``kind`` ``png`` or ``jpeg``) bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if kind == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG", compress_level=1)  # fast; 10 % larger than 6
    return buffer.getvalue()


def image_uri(pixels: np.ndarray, kind: str = "png") -> str:
    """A uint8 array (:func:`encode_image`) as a ``data:`` URI."""
    return data_uri(encode_image(pixels, kind), f"image/{kind}")
