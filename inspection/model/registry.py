"""Versioned model folders.

A model is ``<models_dir>/<version>/`` holding

- ``weights.pt``: the torch state dict (for the torch backend and further training);
- ``model.xml`` / ``model.bin``: the same network as OpenVINO IR, FP32 weights, dynamic batch
  dimension, input (N, 3, S, S) float32 already preprocessed, output logits (N, C);
- ``model.json``: the :class:`ModelCard`;
- optionally ``model_int8.xml`` / ``model_int8.bin``: the INT8 IR made by NNCF post-training
  quantization (:mod:`training.quantize`), served with ``load_classifier(...,
  variant="int8")``.

A model of several *views* (``ModelCard.views``) holds no network of its own: each view is a
complete model folder ``view<side>/`` inside it (:mod:`inspection.model.views`).

Reading cards and resolving versions needs neither torch nor OpenVINO; saving and exporting
import them lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from inspection.model.labels import CLASSES
from inspection.model.preprocess import PREPROCESSING

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

WEIGHTS_FILE = "weights.pt"
IR_XML = "model.xml"
IR_BIN = "model.bin"
IR_INT8_XML = "model_int8.xml"  # made by training.quantize (NNCF)
IR_INT8_BIN = "model_int8.bin"
CARD_FILE = "model.json"
GBDT_FILE = "gbdt.txt"  # a boosted-tree head's LightGBM model (card.head == "gbdt")
LATEST = "latest"
IR_INPUT_NAME = "crops"
IR_OUTPUT_NAME = "logits"

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Thresholds(BaseModel):
    """Decision thresholds on the defect score (1 - P(none)) of a region.

    score < ``pass_below`` -> pass; score >= ``fail_at_or_above`` -> fail; between -> review.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    pass_below: float = Field(ge=0.0, le=1.0)
    fail_at_or_above: float = Field(ge=0.0, le=1.0)
    threshold_version: str
    target_fnr: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.pass_below > self.fail_at_or_above:
            raise ValueError(
                f"pass_below ({self.pass_below}) must be <= fail_at_or_above "
                f"({self.fail_at_or_above})"
            )
        return self


class ModelCard(BaseModel):
    """What a model folder holds and how it was made (``model.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    arch: Literal["small", "efficientnet_lite0"]
    input_size: int = Field(default=64, gt=0)
    crop_min_side: int = Field(
        default=0,
        ge=0,
        description="the smallest square (px) a region's crop is cut from before it is "
        "resized to input_size (inspection.crops.make_crops); 0: the box plus its context "
        "alone, as in models made before this field",
    )
    views: tuple[int, ...] = Field(
        default=(),
        description="a model of several views: the crop_min_side of each member network, "
        "each a model folder view<side>/ inside this one, their probabilities averaged "
        "(heatmaps from the first); empty: the one network of this folder",
    )
    classes: tuple[str, ...] = CLASSES
    preprocessing: str = PREPROCESSING
    thresholds: Thresholds | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    training_data_hash: str = ""
    mode: Literal["reference", "locator", "anomaly"] = Field(
        default="reference",
        description="the inspection path the model serves: reference (ROI against the "
        "product's template, or the recipe without one, then this classifier), locator (a "
        "learned region network, locator.xml, then this classifier: no template), anomaly "
        "(a PatchCore model of good images: feature IR + memory bank, no classifier)",
    )
    head: Literal["cnn", "gbdt"] = Field(
        default="cnn",
        description="what decides a region: the CNN's own classifier, or a LightGBM model "
        "(gbdt.txt) on the CNN's pooled features",
    )
    topology_bias: tuple[tuple[float, ...], ...] | None = Field(
        default=None,
        description="the topology prior (inspection.model.topology): a (9, classes) bias "
        "added to the logits by each crop's connectivity signature; None: no prior",
    )
    created_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    torch_version: str | None = None
    openvino_version: str | None = None

    def require_thresholds(self) -> Thresholds:
        """The thresholds, or a ``ValueError`` saying the model was never calibrated."""
        if self.thresholds is None:
            raise ValueError(
                f"model {self.version} has no decision thresholds in its card; calibrate it "
                "before serving"
            )
        return self.thresholds

    @field_validator("version")
    @classmethod
    def _version_is_folder_name(cls, v: str) -> str:
        if v == LATEST or not _VERSION_RE.match(v):
            raise ValueError(
                f"model version {v!r} must be a folder name of letters, digits, '.', '_' or "
                f"'-' (not starting with a punctuation mark, not {LATEST!r})"
            )
        return v

    @field_validator("created_at")
    @classmethod
    def _to_utc(cls, v: datetime) -> datetime:
        return v.astimezone(UTC)

    @property
    def crop_sides(self) -> tuple[int, ...]:
        """The smallest square of each view's crops (one entry for a one-network model)."""
        return self.views or (self.crop_min_side,)

    def topology(self) -> np.ndarray | None:
        """The topology bias as a (9, classes) float32 array, or None."""
        if self.topology_bias is None:
            return None
        import numpy as np

        return np.asarray(self.topology_bias, np.float32)

    @field_validator("classes")
    @classmethod
    def _classes_ok(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError(f"classes must be at least two distinct names, got {v}")
        return v

    @model_validator(mode="after")
    def _views_fit(self) -> ModelCard:
        v = self.views
        if v and (len(v) < 2 or len(set(v)) != len(v) or min(v) < 0):
            raise ValueError(f"views must be two or more distinct crop sides >= 0, got {v}")
        if v and (self.crop_min_side != v[0] or self.head != "cnn" or self.mode == "anomaly"):
            raise ValueError(
                "a model of views is CNN-headed, not an anomaly model, and its crop_min_side "
                f"is its first view's ({v[0]}), got {self.crop_min_side}, {self.head}, "
                f"{self.mode}"
            )
        return self

    @model_validator(mode="after")
    def _topology_fits(self) -> ModelCard:
        rows = self.topology_bias  # 9 = topology.SIGNATURES (not imported here: it needs cv2)
        if rows is not None and (len(rows) != 9 or {len(r) for r in rows} != {len(self.classes)}):
            raise ValueError(
                f"topology_bias must be 9 rows of {len(self.classes)} (one per class), got "
                f"{len(rows)} rows of {sorted({len(r) for r in rows})}"
            )
        return self


def data_hash(items: Iterable[str]) -> str:
    """SHA-256 over the sorted items (e.g. file names + content hashes of the training set).

    Order-insensitive; duplicates count. Returns ``"sha256:<hex>"``.
    """
    h = hashlib.sha256()
    for item in sorted(items):
        h.update(item.encode("utf-8"))
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def export_openvino(module: nn.Module, input_size: int, out_dir: Path) -> Path:
    """Export ``module`` (float32 input (N, 3, S, S) -> logits) as FP32 OpenVINO IR.

    The batch dimension is dynamic. Writes ``model.xml``/``model.bin`` into ``out_dir`` and
    returns the path of ``model.xml``. The module's train/eval mode is restored afterwards.
    """
    import openvino as ov
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    device = next(iter(module.parameters())).device
    if device.type != "cpu":
        raise ValueError(f"export the module from the CPU (it is on {device})")
    module.eval()
    try:
        example = torch.zeros((1, 3, input_size, input_size), dtype=torch.float32)
        # OpenVINO traces the module with TorchScript. Padding computed from the (fixed)
        # spatial size becomes a constant in the trace, which is right: only the batch
        # dimension is dynamic. torch 2.13 also flags torch.jit.trace as deprecated.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.trace", category=DeprecationWarning
            )
            ov_model = ov.convert_model(
                module,
                example_input=example,
                input=[ov.PartialShape([-1, 3, input_size, input_size])],
            )
    finally:
        module.train(was_training)
    ov_model.inputs[0].get_tensor().set_names({IR_INPUT_NAME})
    ov_model.outputs[0].get_tensor().set_names({IR_OUTPUT_NAME})
    xml = out_dir / IR_XML
    ov.save_model(ov_model, xml, compress_to_fp16=False)
    return xml


def save_model(module: nn.Module, card: ModelCard, models_dir: Path) -> Path:
    """Write ``module`` and ``card`` as ``<models_dir>/<card.version>/``; returns that folder.

    The folder is assembled under a temporary name and renamed into place, so readers never
    see a half-written model. An existing version is never overwritten (``FileExistsError``).
    The torch and OpenVINO versions are recorded in the card.
    """
    import torch

    final, card = new_model(models_dir, card)
    with assembled(final) as tmp:
        state = {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}
        torch.save(state, tmp / WEIGHTS_FILE)
        cpu_module = module if _on_cpu(module) else _cpu_copy(module)
        export_openvino(cpu_module, card.input_size, tmp)
        (tmp / CARD_FILE).write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return final


def new_model(models_dir: Path, card: ModelCard) -> tuple[Path, ModelCard]:
    """The folder a new model ``card`` is saved as (``FileExistsError`` when that version
    exists; ``models_dir`` made), and the card with the torch and OpenVINO versions."""
    import openvino as ov
    import torch

    final = Path(models_dir) / card.version
    if final.exists():
        raise FileExistsError(f"model version {card.version!r} already exists: {final}")
    final.parent.mkdir(parents=True, exist_ok=True)
    versions = {"torch_version": torch.__version__, "openvino_version": ov.get_version()}
    return final, card.model_copy(update=versions)


def clone_model(model_dir: Path, version: str, into: Path | None = None) -> Path:
    """The same model registered again as ``version`` in ``into`` (default: beside it), for
    a swap rehearsal; returns its folder, or the existing one."""
    final = Path(into or Path(model_dir).parent) / version
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with assembled(final) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        card = load_card(tmp).model_copy(update={"version": version})
        (tmp / CARD_FILE).write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return final


@contextlib.contextmanager
def assembled(final: Path) -> Iterator[Path]:
    """A temporary folder beside ``final``, renamed into place when the block succeeds, so
    that readers never see half a model (and removed when it fails)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _on_cpu(module: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in module.parameters())


def _cpu_copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module).to("cpu")


def load_card(model_dir: Path) -> ModelCard:
    """Read and validate ``<model_dir>/model.json``."""
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no model card {CARD_FILE} in {model_dir}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"model card {path} is not valid JSON: {exc}") from exc
    return ModelCard.model_validate(raw)


def update_card(model_dir: Path, card: ModelCard) -> None:
    """Replace the card of an existing model folder (e.g. after calibrating thresholds).

    The card's version must equal the folder's name; the file is replaced atomically.
    """
    model_dir = Path(model_dir)
    if card.version != model_dir.name:
        raise ValueError(f"card version {card.version!r} does not match folder {model_dir}")
    if not (model_dir / CARD_FILE).is_file():
        raise FileNotFoundError(f"no model card {CARD_FILE} in {model_dir}")
    tmp = model_dir / f".{CARD_FILE}.tmp"
    tmp.write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, model_dir / CARD_FILE)


def list_versions(models_dir: Path) -> list[str]:
    """Names of the complete model folders (those with a model card) in ``models_dir``."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in models_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / CARD_FILE).is_file()
    )


def resolve_model(
    models_dir: Path,
    version: str | None = None,
    mode: Literal["reference", "locator", "anomaly"] = "reference",
) -> Path:
    """Folder of model ``version`` in ``models_dir``.

    ``None`` or ``"latest"`` picks the newest model of ``mode`` (reference by default) by the
    card's ``created_at`` (ties broken by version name): a reference model is the default of
    every product, where locator and anomaly models serve only the products registered for
    them. Raises
    ``FileNotFoundError`` naming the folder and the versions it holds.
    """
    models_dir = Path(models_dir)
    available = list_versions(models_dir)
    if version is None or version == LATEST:
        cards = {v: load_card(models_dir / v) for v in available}
        of_mode = [v for v, c in cards.items() if c.mode == mode]
        if not of_mode:
            raise FileNotFoundError(
                f"no {mode}-mode models in {models_dir} (no <version>/{CARD_FILE} found)"
            )
        newest = max(of_mode, key=lambda v: (cards[v].created_at, v))
        return models_dir / newest
    if version not in available:
        raise FileNotFoundError(
            f"model version {version!r} not found in {models_dir}; "
            f"available: {', '.join(available) if available else 'none'}"
        )
    return models_dir / version
