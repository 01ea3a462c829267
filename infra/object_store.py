"""Object store for claim-check images and reference templates (a local folder by default).

Kafka is not a blob store: images above `inline_max_bytes` are written here and the event
carries a `file://` URI. Content-addressed (sha256), so re-publishing is idempotent.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from schemas.events import ImageRef

_MEDIA_SUFFIX = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/bmp": ".bmp",
    "image/tiff": ".tif",
}
_TEMPLATE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class StorageError(ValueError):
    """A claim-check URI or template that cannot be read; the message says which and why."""


class ObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def put(self, data: bytes, media_type: str = "image/png") -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / "blobs" / digest[:2] / (digest + _MEDIA_SUFFIX.get(media_type, ".bin"))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # atomic: a reader never sees half a file
        return path.as_uri()

    def get(self, uri: str, max_bytes: int | None = None) -> bytes:
        """The object a ``file://`` claim-check URI names, inside this store only; every way
        it can be wrong (scheme, null byte, outside the store, missing, a folder, unreadable,
        larger than ``max_bytes``) is a :class:`StorageError` naming the URI."""
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise StorageError(f"unsupported claim-check URI scheme {parsed.scheme!r} in {uri!r}")
        raw_path = unquote(parsed.path)
        if "\x00" in raw_path:
            raise StorageError(f"claim-check URI {uri!r} contains a null byte")
        try:
            path = Path(raw_path).resolve()
        except (OSError, ValueError, RuntimeError) as exc:  # symlink loops, odd names
            raise StorageError(f"claim-check URI {uri!r} cannot be resolved: {exc}") from None
        if not path.is_relative_to(self.root):
            raise StorageError(
                f"claim-check URI {uri!r} points outside the object store {self.root}"
            )
        return _read(path, uri, max_bytes)

    def image_bytes(self, ref: ImageRef, max_bytes: int | None = None) -> bytes:
        """The bytes of an inline or claim-checked image, checked against its sha256 if given."""
        data = ref.data if ref.data is not None else self.get(ref.uri or "", max_bytes)
        if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
            raise StorageError(f"image bytes do not match sha256 {ref.sha256}")
        return data

    # Reference templates: the defect-free, aligned image of a product region, by id.
    def template_path(self, template_id: str) -> Path:
        if not _TEMPLATE_ID.match(template_id):
            raise StorageError(f"invalid template id {template_id!r}: use letters, digits, . _ -")
        return self.root / "templates" / f"{template_id}.png"

    def put_template(self, template_id: str, png: bytes) -> Path:
        path = self.template_path(template_id)
        if not path.exists() or path.read_bytes() != png:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(png)
            os.replace(tmp, path)
        return path

    def get_template(self, template_id: str, max_bytes: int | None = None) -> bytes | None:
        """The template's PNG bytes, or None when the store has no such template."""
        path = self.template_path(template_id)
        if not path.exists():
            return None
        return _read(path, f"template {template_id!r}", max_bytes)

    def template_ids(self) -> list[str]:
        """Every template id in the store, sorted."""
        folder = self.root / "templates"
        return sorted(p.stem for p in folder.glob("*.png")) if folder.is_dir() else []

    def remove_template(self, template_id: str) -> bool:
        """Delete a template; False when there was none."""
        path = self.template_path(template_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True


def _read(path: Path, what: str, max_bytes: int | None) -> bytes:
    try:
        if path.is_dir():
            raise StorageError(f"{what} names a folder, not an object")
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise StorageError(
                f"{what} is {path.stat().st_size} bytes, over the limit of {max_bytes} "
                "(images.max_bytes)"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise StorageError(f"claim-check object not found: {what}") from None
    except OSError as exc:  # permissions, a name too long, a broken link, an I/O error
        raise StorageError(f"{what} cannot be read: {type(exc).__name__}: {exc.strerror}") from None
