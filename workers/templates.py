"""Reference templates for the worker: read from the object store each time (a few kB) and
decoded once per content, so that a replaced template takes effect at once."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

from infra.images import ImageDecodeError, ImagePolicy, decode_gray
from infra.object_store import ObjectStore, StorageError


class TemplateError(Exception):
    """A template that cannot be used; the message says why and what to do."""


class TemplateCache:
    def __init__(self, store: ObjectStore, size: int = 64) -> None:
        self.store = store
        self.size = size
        self._decoded: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # a worker prepares several boards at once

    def get(self, template_id: str, policy: ImagePolicy) -> np.ndarray:
        """The template by id, decoded under the image policy."""
        try:
            png = self.store.get_template(template_id, policy.max_bytes)
        except StorageError as exc:
            raise TemplateError(str(exc)) from exc
        if png is None:
            raise TemplateError(
                f"template {template_id!r} is not in the object store: add it with "
                f"`linecheck templates add {template_id} FILE`, then replay the dead letter"
            )
        digest = hashlib.sha256(png).hexdigest()
        with self._lock:
            cached = self._decoded.get(digest)
            if cached is not None:
                self._decoded.move_to_end(digest)
                return cached
        try:
            image = decode_gray(png, what=f"template {template_id!r}", policy=policy)
        except ImageDecodeError as exc:
            raise TemplateError(str(exc)) from exc
        except Exception as exc:  # a broken golden board fails its boards, not the worker
            raise TemplateError(f"{type(exc).__name__}: {exc}") from exc
        with self._lock:
            self._decoded[digest] = image
            if len(self._decoded) > self.size:
                self._decoded.popitem(last=False)
        return image
