"""Defect classes of the region classifier: index 0 = no defect, 1..6 = DefectType's order
(DeepPCB's type ids)."""

from schemas.events import DefectType

CLASSES: tuple[str, ...] = ("none", *(t.value for t in DefectType))
NUM_CLASSES: int = len(CLASSES)
