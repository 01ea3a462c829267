"""PyTorch backend: the registry folder's ``weights.pt`` in the architecture of its card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from inspection.model.nets import ClassifierNet, build_model
from inspection.model.preprocess import preprocess, softmax
from inspection.model.registry import WEIGHTS_FILE, ModelCard, load_card
from inspection.model.topology import add_bias


def load_module(model_dir: Path, card: ModelCard | None = None) -> ClassifierNet:
    """The folder's ``weights.pt`` in its card's architecture, on the CPU, in eval mode."""
    model_dir = Path(model_dir)
    card = card or load_card(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no torch weights {WEIGHTS_FILE} in {model_dir}")
    module = build_model(card.arch, len(card.classes), pretrained=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    return module.eval()


class TorchClassifier:
    """:class:`inspection.backends.base.Classifier` on PyTorch eager, device "cpu" or "cuda[:i]".

    ``threads`` sets ``torch.set_num_threads`` (process-wide) when given.
    """

    def __init__(self, model_dir: Path, device: str = "cpu", threads: int | None = None) -> None:
        model_dir = Path(model_dir)
        card = load_card(model_dir)
        self.card = card
        self.version: str = card.version
        self.input_size: int = card.input_size
        self.crop_min_side: int = card.crop_min_side
        self.crop_sides: tuple[int, ...] = card.crop_sides
        self.classes: tuple[str, ...] = card.classes
        self.topology_bias = card.topology()
        dev = torch.device(device)
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"torch backend device must be 'cpu' or 'cuda[:i]', got {device!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available")
        self.device = dev
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        self.module = load_module(model_dir, card).to(dev).eval()

        # CAM: the final linear layer's weight, for heatmaps from the deciding inference
        self.cam_weight: np.ndarray | None = (
            self.module.classifier.weight.detach().float().cpu().numpy()
        )

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        x = preprocess(crops, self.input_size)
        if x.shape[0] == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        with torch.inference_mode():
            logits = self.module(torch.from_numpy(x).to(self.device))
        return softmax(add_bias(logits.float().cpu().numpy(), crops, self.topology_bias))

    def predict_with_features(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and the last feature maps (N, C, h, w) of one forward pass."""
        x = preprocess(crops, self.input_size)
        if x.shape[0] == 0:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, 0, 0, 0), np.float32)
        with torch.inference_mode():
            feats = self.module.features(torch.from_numpy(x).to(self.device))
            logits = self.module.classifier(feats.mean(dim=(2, 3)))
        probs = softmax(add_bias(logits.float().cpu().numpy(), crops, self.topology_bias))
        return probs, feats.float().cpu().numpy()
