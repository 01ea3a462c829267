"""One file to carry a model to a line PC with no network: ``linecheck models export V FILE``
writes a tar.gz of the model folder (weights, IRs, card with thresholds and data hash) and a
MANIFEST.json with each file's SHA-256; ``import`` checks every file against it before the
model is registered, so a truncated or altered copy never becomes a model."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from inspection.model.registry import CARD_FILE, load_card

MANIFEST = "MANIFEST.json"
FORMAT = "linecheck-model/1"


class ArchiveError(ValueError):
    """A model archive that cannot be trusted or used; the message says why."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_model(model_dir: Path, out: Path) -> dict[str, object]:
    """Write ``out`` (tar.gz); returns the manifest."""
    card = load_card(model_dir)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    manifest: dict[str, object] = {
        "format": FORMAT,
        "version": card.version,
        "exported_at": datetime.now(UTC).isoformat(),
        "training_data_hash": card.training_data_hash,
        "files": {str(p.relative_to(model_dir).as_posix()): _sha256(p) for p in files},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        body = json.dumps(manifest, indent=2).encode()
        info = tarfile.TarInfo(f"{card.version}/{MANIFEST}")
        info.size, info.mtime = len(body), int(datetime.now(UTC).timestamp())
        tar.addfile(info, io.BytesIO(body))
        for p in files:
            tar.add(p, arcname=f"{card.version}/{p.relative_to(model_dir).as_posix()}")
    tmp.replace(out)
    return manifest


def _safe_members(tar: tarfile.TarFile) -> tuple[str, list[tarfile.TarInfo]]:
    members = tar.getmembers()
    tops = {PurePosixPath(m.name).parts[0] for m in members if m.name}
    if len(tops) != 1:
        raise ArchiveError(f"a model archive holds one folder, this one {sorted(tops)}")
    for m in members:
        parts = PurePosixPath(m.name).parts
        if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
            raise ArchiveError(f"refusing archive member {m.name!r} (outside the model, or a link)")
    return tops.pop(), members


def import_model(archive: Path, models_dir: Path) -> Path:
    """Verify ``archive`` against its manifest and install it in ``models_dir``; the model
    folder. An identical model already there is accepted; a different one is refused."""
    try:
        tar = tarfile.open(archive, "r:gz")  # noqa: SIM115 - closed by the with below
    except (OSError, tarfile.TarError) as exc:
        raise ArchiveError(f"{archive} is not a model archive: {exc}") from exc
    with tar, tempfile.TemporaryDirectory(dir=_ensure(models_dir), prefix=".import-") as tmp:
        version, _members = _safe_members(tar)
        try:
            tar.extractall(tmp, filter="data")
        except (OSError, tarfile.TarError) as exc:
            raise ArchiveError(f"{archive} is damaged: {exc}") from exc
        staged = Path(tmp) / version
        manifest = _manifest(staged)
        if manifest.get("version") != version:
            raise ArchiveError(f"manifest names {manifest.get('version')!r}, folder {version!r}")
        files = manifest.get("files")
        if not isinstance(files, dict) or CARD_FILE not in files:
            raise ArchiveError(f"the manifest lists no {CARD_FILE}")
        present = {
            p.relative_to(staged).as_posix()
            for p in staged.rglob("*")
            if p.is_file() and p.name != MANIFEST
        }
        if present != set(files):
            raise ArchiveError(
                f"files differ from the manifest: missing {sorted(set(files) - present)}, "
                f"unlisted {sorted(present - set(files))}"
            )
        for name, digest in files.items():
            if _sha256(staged / name) != digest:
                raise ArchiveError(f"{name} does not match its SHA-256 in the manifest")
        (staged / MANIFEST).unlink()
        if load_card(staged).version != version:
            raise ArchiveError("the model card names another version than its folder")
        target = models_dir / version
        if target.exists():
            same = all(
                (target / n).is_file() and _sha256(target / n) == d for n, d in files.items()
            )
            if not same:
                raise ArchiveError(f"{target} exists with other contents: not replaced")
            return target
        shutil.move(str(staged), target)
    return target


def _manifest(staged: Path) -> dict[str, object]:
    try:
        found = json.loads((staged / MANIFEST).read_text())
    except (FileNotFoundError, ValueError) as exc:
        raise ArchiveError(f"no readable {MANIFEST}: {exc}") from exc
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        raise ArchiveError(f"{MANIFEST} is not a {FORMAT} manifest")
    return found


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
