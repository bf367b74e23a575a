"""Experiment trackers (MLflow, TensorBoard, W&B, trackio) for runs, comparisons and `lmtune track`."""

from lmtune.trackers.session import TrackingSession

__all__ = ["TrackingSession"]
