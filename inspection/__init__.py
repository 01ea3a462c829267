"""How a board is inspected, shared by the online workers and offline model building:
the ROI stage (``roi``), classifier crops (``crops``), the board verdict rules
(``verdict``), class-activation explanations (``explain``), the CNN architectures,
preprocessing and model registry (``model``) and the inference backends (``backends``,
OpenVINO or torch, chosen by config)."""
