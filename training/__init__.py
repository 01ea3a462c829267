"""Offline model building, beside the online workers: crop tables from labelled boards,
the trainer, board-level threshold calibration, INT8 quantization, evaluation with
DeepPCB's detection metrics, and the pipelines behind ``linecheck train``,
``calibrate``, ``evaluate`` and ``quantize``. Never imported by a worker."""
