"""Image bytes <-> grayscale arrays, under an explicit policy, with errors that say what was
wrong and by how much.

The policy (:class:`ImagePolicy`, ``[images]`` in the settings) is checked in this order:

1. encoded size: at most ``max_bytes``;
2. the header, read by Pillow without decoding a pixel: a known format, and at most
   ``max_pixels`` pixels, so that a small file claiming 60000×60000 pixels is refused before
   anything is allocated;
3. after decoding (OpenCV, every channel and bit depth as stored): 8-bit is taken as is;
   16-bit is scaled by its real range (its darkest pixel becomes 0, its brightest 255) when
   ``sixteen_bit = "scale"``, refused when ``"reject"``; any other depth is refused;
   colour is converted to luma (ITU-R BT.601, alpha dropped) when ``colour = "luma"``,
   refused when ``"reject"``.

Every refusal is an :class:`ImagePolicyError` (an :class:`ImageDecodeError`) whose message
names the rule and the numbers.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np


class ImageDecodeError(ValueError):
    """Bytes that are not an image this system can read."""


class ImagePolicyError(ImageDecodeError):
    """A readable image that the image policy refuses (too large, a refused depth, colour)."""


@dataclass(frozen=True)
class ImagePolicy:
    max_bytes: int = 32 * 1024 * 1024
    """largest encoded image accepted"""
    max_pixels: int = 40_000_000
    """largest width × height accepted, read from the header before decoding"""
    sixteen_bit: Literal["scale", "reject"] = "scale"
    """16-bit images: scaled by their real range to 8 bits, or refused"""
    colour: Literal["luma", "reject"] = "luma"
    """colour images: converted to luma (BT.601, alpha dropped), or refused"""


DEFAULT_POLICY = ImagePolicy()


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int
    mode: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes, what: str = "image") -> ImageHeader:
    """Format and size from the header only (Pillow opens lazily: no pixel is decoded)."""
    from PIL import Image, UnidentifiedImageError

    def opened() -> ImageHeader:
        with Image.open(io.BytesIO(data)) as im:
            return ImageHeader(str(im.format), int(im.width), int(im.height), str(im.mode))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            try:
                return opened()
            except Image.DecompressionBombError:
                # Pillow guards its own decoding; we decode nothing with it, and our limit
                # (checked by the caller) wants the size: read the header without its guard.
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    return opened()
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            head = data[:8].hex()
            raise ImageDecodeError(
                f"{what} is not a decodable image ({len(data)} bytes, starts with 0x{head}): "
                f"{type(exc).__name__}"
            ) from None


def check_size(data: bytes, policy: ImagePolicy, what: str = "image") -> ImageHeader:
    """Steps 1 and 2 of the policy: encoded bytes, then pixels from the header."""
    if not data:
        raise ImageDecodeError(f"{what} is empty (0 bytes)")
    if len(data) > policy.max_bytes:
        raise ImagePolicyError(
            f"{what} is {len(data)} bytes, over the limit of {policy.max_bytes} (images.max_bytes)"
        )
    header = read_header(data, what)
    if header.width < 1 or header.height < 1:
        raise ImageDecodeError(f"{what} header claims {header.width}x{header.height} pixels")
    if header.pixels > policy.max_pixels:
        raise ImagePolicyError(
            f"{what} header claims {header.width}x{header.height} = {header.pixels} pixels, "
            f"over the limit of {policy.max_pixels} (images.max_pixels)"
        )
    return header


def to_gray8(array: np.ndarray, policy: ImagePolicy, what: str = "image") -> np.ndarray:
    """Step 3 of the policy on a decoded array (H, W) or (H, W, C), channels in BGR(A)."""
    import cv2

    if array.dtype == np.uint16:
        if policy.sixteen_bit == "reject":
            raise ImagePolicyError(f"{what} is 16-bit; images.sixteen_bit = 'reject'")
        lo, hi = int(array.min()), int(array.max())
        scaled = (array.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1))
        array = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImagePolicyError(f"{what} has {array.dtype} pixels; only 8- and 16-bit are read")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3:
        channels = array.shape[2]
        if policy.colour == "reject":
            raise ImagePolicyError(
                f"{what} has {channels} colour channels; images.colour = 'reject'"
            )
        code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(channels)
        if code is None:
            raise ImagePolicyError(f"{what} has {channels} channels; 1, 3 or 4 are read")
        array = cv2.cvtColor(array, code)
    if array.ndim != 2:
        raise ImageDecodeError(f"{what} decoded to an array of shape {array.shape}")
    return np.ascontiguousarray(array)


def decode_gray(
    data: bytes, what: str = "image", policy: ImagePolicy = DEFAULT_POLICY
) -> np.ndarray:
    """The image as 8-bit grayscale (H, W), under ``policy``."""
    import cv2

    header = check_size(data, policy, what)
    try:
        array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageDecodeError(f"{what} could not be decoded: {str(exc).strip()[-200:]}") from None
    if array is None or array.size == 0:
        raise ImageDecodeError(
            f"{what} is not a decodable image ({len(data)} bytes, a {header.format} header "
            f"claiming {header.width}x{header.height}, starts with 0x{data[:8].hex()})"
        )
    return to_gray8(array, policy, what)


def encode_png(image: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError(f"could not encode array of shape {image.shape} as PNG")
    return buf.tobytes()
