"""Ignite/MONAI workflow pieces: mixed-precision inferer, checkpoints, progress, per-subject metrics."""

from __future__ import annotations

from common.engines.checkpoint import (
    AtomicCheckpointSaver,
    ResumeFromLatest,
    WeightsLoader,
    latest_checkpoint,
    load_weights,
)
from common.engines.inferers import AutocastInferer
from common.engines.progress import ProgressBarHandler
from common.engines.subject_metrics import SubjectDiceWriter
from common.engines.validation import ValidateAtEnd

__all__ = [
    "AtomicCheckpointSaver",
    "AutocastInferer",
    "ProgressBarHandler",
    "ResumeFromLatest",
    "SubjectDiceWriter",
    "ValidateAtEnd",
    "WeightsLoader",
    "latest_checkpoint",
    "load_weights",
]
