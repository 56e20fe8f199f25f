"""Models: the architecture table, the one model-name resolver, ``build_model`` and
``readout``, the identity scalings a/b, the MLP baselines, offline weights."""
