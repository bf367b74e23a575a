"""The one training loop (on accelerate) and its parts: optimizer, checkpoints, precision, the metrics log."""
