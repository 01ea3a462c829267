"""Image bytes <-> grayscale arrays, with errors that say what was wrong."""

from __future__ import annotations

import numpy as np


class ImageDecodeError(ValueError):
    pass


def decode_gray(data: bytes, what: str = "image") -> np.ndarray:
    import cv2

    if not data:
        raise ImageDecodeError(f"{what} is empty (0 bytes)")
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if array is None or array.size == 0:
        head = data[:8].hex()
        raise ImageDecodeError(
            f"{what} is not a decodable image ({len(data)} bytes, starts with 0x{head})"
        )
    return np.ascontiguousarray(array)


def encode_png(image: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError(f"could not encode array of shape {image.shape} as PNG")
    return buf.tobytes()
