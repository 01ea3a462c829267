"""Region classifier: labels, architectures (plain torch), preprocessing and the model
registry (versioned folders with a card, weights and OpenVINO IR).

Importing this package is cheap: torch is imported only by ``nets`` and by the registry
functions that save or export a module.
"""
