"""Region classifier: labels, architectures, preprocessing, training and the model registry.

Importing this package is cheap: torch is imported only by the modules that need it
(``nets``, ``train``) and by the registry functions that save or export a module.
"""
