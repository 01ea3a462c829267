"""A hostile line: malformed and malicious board events, for `linecheck chaos` and the tests.

Each :class:`Hostile` is a kind, the raw message bytes, the dead-letter stage it must end in
and words its reason must contain. They cover broken JSON and schemas, images that lie about
their size, claim-check URIs that escape the store, missing templates and more.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from infra.images import encode_png
from infra.object_store import ObjectStore
from schemas.events import FlaggedBoard, ImageRef


def png_with_header(width: int, height: int, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A PNG whose IHDR claims ``width``×``height`` with a tiny (wrong) IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def bmp_with_header(width: int, height: int) -> bytes:
    """A BMP whose header claims ``width``×``height`` (8-bit) and holds no pixels."""
    header = struct.pack("<2sIHHI", b"BM", 54, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, 0, 2835, 2835, 0, 0)
    return header + info


@dataclass(frozen=True)
class Hostile:
    kind: str
    raw: bytes
    stage: str
    reason: str  # words the dead letter's reason must contain


def _event(image: ImageRef, **kw: object) -> bytes:
    fields: dict[str, object] = dict(
        line="L1", machine="aoi-1", product="P", board_serial="S-hostile", image=image
    )
    fields.update(kw)
    return FlaggedBoard(**fields).model_dump_json().encode()  # type: ignore[arg-type]


def hostile_events(store: ObjectStore, board_png: bytes, template_id: str) -> list[Hostile]:
    """Thirty-odd kinds of bad input; ``board_png`` and ``template_id`` are a valid board and
    its registered template (so that only the named fault is wrong)."""
    root = store.root
    (root / "a-folder").mkdir(parents=True, exist_ok=True)
    loop = root / "loop.png"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    gray16 = np.tile(np.arange(640, dtype=np.uint16) * 50, (640, 1))
    ok = FlaggedBoard(
        line="L1",
        machine="aoi-1",
        product="P",
        board_serial="S-ok",
        template_id=template_id,
        image=ImageRef(data=board_png),
    ).model_dump(mode="json")

    def mutate(change: Callable[[dict[str, Any]], None]) -> bytes:
        doc = json.loads(json.dumps(ok))
        change(doc)
        return json.dumps(doc).encode()

    def tiny(**kw: object) -> ImageRef:
        return ImageRef(**kw)  # type: ignore[arg-type]

    cases = [
        Hostile("not json", b"\x00\x01 not json", "decode", "not valid JSON"),
        Hostile("empty message", b"", "decode", "not valid JSON"),
        Hostile("truncated json", json.dumps(ok).encode()[:50], "decode", "not valid JSON"),
        Hostile("json array", b"[1, 2, 3]", "validate", "(message)"),
        Hostile("json string", b'"board"', "validate", "(message)"),
        Hostile("invalid utf-8", b'{"line": "\xff\xfe"}', "decode", "not valid JSON"),
        Hostile("missing fields", b'{"line": "L1"}', "validate", "board_serial"),
        Hostile(
            "NUL in the board serial",
            mutate(lambda d: d.update(board_serial="S\x00-1")),
            "validate",
            "board_serial",
        ),
        Hostile(
            "control characters in the line",
            mutate(lambda d: d.update(line="L1\r\n\x1b[2J")),
            "validate",
            "line",
        ),
        Hostile(
            "wrong schema version",
            mutate(lambda d: d.update(schema_version=2)),
            "validate",
            "schema_version",
        ),
        Hostile("unknown field", mutate(lambda d: d.update(colour="red")), "validate", "colour"),
        Hostile("line too long", mutate(lambda d: d.update(line="L" * 10_000)), "validate", "line"),
        Hostile(
            "bad timestamp",
            mutate(lambda d: d.update(inspected_at="yesterday")),
            "validate",
            "inspected_at",
        ),
        Hostile(
            "naive timestamp",
            mutate(lambda d: d.update(inspected_at="2026-01-01T00:00:00")),
            "validate",
            "inspected_at",
        ),
        Hostile(
            "image with data and uri",
            mutate(lambda d: d["image"].update(uri=store.put(board_png))),
            "validate",
            "exactly one",
        ),
        Hostile(
            "bad base64",
            mutate(lambda d: d["image"].update(data="@@@not base64@@@")),
            "validate",
            "image.data",
        ),
        Hostile(
            "unknown media type",
            mutate(lambda d: d["image"].update(media_type="image/gif")),
            "validate",
            "media_type",
        ),
        Hostile(
            "not an image",
            _event(tiny(data=b"%PDF-1.7 not an image"), template_id=template_id),
            "image",
            "not a decodable image",
        ),
        Hostile("empty image", mutate(lambda d: d["image"].update(data="")), "image", "empty"),
        Hostile(
            "png header 60000x60000",
            _event(tiny(data=png_with_header(60000, 60000))),
            "image",
            "60000x60000",
        ),
        Hostile("png header 0x0", _event(tiny(data=png_with_header(0, 0))), "image", "decodable"),
        Hostile(
            "bmp header 50000x50000",
            _event(tiny(data=bmp_with_header(50000, 50000))),
            "image",
            "50000x50000",
        ),
        Hostile(
            "png with a broken body", _event(tiny(data=png_with_header(640, 640))), "image", "decod"
        ),
        Hostile(
            "truncated png",
            _event(tiny(data=board_png[: len(board_png) // 2]), template_id=template_id),
            "image",
            "decod",
        ),
        Hostile(
            "16-bit and the wrong size",
            _event(tiny(data=encode_png(gray16[:100])), template_id=template_id),
            "image",
            "640x100",
        ),
        Hostile(
            "sha256 mismatch",
            _event(tiny(data=board_png, sha256="0" * 64), template_id=template_id),
            "image",
            "sha256",
        ),
        Hostile(
            "uri with a null byte",
            _event(tiny(uri=root.as_uri() + "/x%00.png")),
            "image",
            "null byte",
        ),
        Hostile(
            "uri naming a folder", _event(tiny(uri=(root / "a-folder").as_uri())), "image", "folder"
        ),
        Hostile(
            "uri outside the store", _event(tiny(uri="file:///etc/passwd")), "image", "outside"
        ),
        Hostile(
            "uri climbing out",
            _event(tiny(uri=root.as_uri() + "/../../etc/passwd")),
            "image",
            "outside",
        ),
        Hostile(
            "uri of a missing object",
            _event(tiny(uri=(root / "gone.png").as_uri())),
            "image",
            "not found",
        ),
        Hostile("uri with a symlink loop", _event(tiny(uri=loop.as_uri())), "image", "loop.png"),
        Hostile(
            "http uri", _event(tiny(uri="http://example.com/board.png")), "image", "unsupported"
        ),
        Hostile(
            "uri with a very long name",
            _event(tiny(uri=(root / ("x" * 5000)).as_uri())),
            "image",
            "x" * 20,
        ),
        Hostile(
            "unknown template",
            _event(tiny(data=board_png), template_id="never-registered"),
            "template",
            "never-registered",
        ),
        Hostile(
            "template id with a path",
            mutate(lambda d: d.update(template_id="../../etc")),
            "template",
            "invalid template id",
        ),
        Hostile(
            "wrong-size board",
            _event(tiny(data=encode_png(np.zeros((64, 64), np.uint8))), template_id=template_id),
            "image",
            "64x64",
        ),
    ]
    return cases


def sixteen_bit_and_colour(board: np.ndarray) -> tuple[bytes, bytes]:
    """The same board as a 16-bit PNG (12 bits used) and as a colour JPEG."""
    import cv2

    sixteen = encode_png(board.astype(np.uint16) * 16)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(board, cv2.COLOR_GRAY2BGR))
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        raise RuntimeError("JPEG encoding failed")
    return sixteen, jpg.tobytes()
