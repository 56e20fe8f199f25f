"""One training run: its config, its folder, its set-up, the loop, the metrics, and
``finetune(config)`` that strings them together."""
