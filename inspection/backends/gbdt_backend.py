"""Boosted-tree head: the CNN's pooled penultimate features (its FP32 OpenVINO IR, with the
pooling node added as an output) classified by a LightGBM model (``gbdt.txt``), the way the
reference deployment put a boosted decision tree on CNN features."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inspection.model.preprocess import preprocess
from inspection.model.registry import GBDT_FILE, IR_XML, load_card
from inspection.model.topology import one_hot


class FeatureExtractor:
    """The pooled features (N, C) the CNN's last linear layer sees, from the FP32 IR, and,
    where the CNN's card carries the topology prior, the crops' signature one-hot (N, 9)
    after them."""

    def __init__(self, model_dir: Path, device: str = "CPU", threads: int | None = None) -> None:
        import openvino as ov

        from inspection.cam import compile_f32, pool_and_weight

        xml = Path(model_dir) / IR_XML
        core = ov.Core()
        model = core.read_model(xml)
        pool, _weight = pool_and_weight(model, xml)
        model.add_outputs([pool.output(0)])
        self._request = compile_f32(core, model, device, threads).create_infer_request()
        self._topology = load_card(model_dir).topology_bias is not None

    def features(self, crops: np.ndarray, batch: int = 512) -> np.ndarray:
        parts = []
        for start in range(0, len(crops), batch):
            self._request.infer({0: preprocess(crops[start : start + batch])})
            pooled = self._request.get_output_tensor(1).data
            rows = pooled.reshape(pooled.shape[0], -1)
            if self._topology:
                rows = np.concatenate([rows, one_hot(crops[start : start + batch])], axis=1)
            parts.append(rows.copy())
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


class GbdtClassifier:
    """:class:`inspection.backends.base.Classifier`: CNN features → LightGBM probabilities."""

    def __init__(self, model_dir: Path, device: str = "CPU", threads: int | None = None) -> None:
        import lightgbm

        card = load_card(model_dir)
        if card.head != "gbdt":
            raise ValueError(f"model {card.version} has no boosted-tree head (card.head)")
        path = Path(model_dir) / GBDT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {GBDT_FILE} in {model_dir}")
        self.version: str = card.version
        self.input_size: int = card.input_size
        self.crop_min_side: int = card.crop_min_side
        self.crop_sides: tuple[int, ...] = card.crop_sides
        self.classes: tuple[str, ...] = card.classes
        self._features = FeatureExtractor(model_dir, device, threads)
        self._booster = lightgbm.Booster(model_file=str(path))
        self._threads = threads or 1

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            preprocess(crops, self.input_size)  # the same input checks as the CNN head
            return np.zeros((0, len(self.classes)), np.float32)
        x = self._features.features(crops)
        probs = np.asarray(self._booster.predict(x, num_threads=self._threads), np.float32)
        if probs.shape != (len(crops), len(self.classes)):
            raise RuntimeError(f"boosted head returned {probs.shape}, expected "
                               f"({len(crops)}, {len(self.classes)})")  # fmt: skip
        return probs
