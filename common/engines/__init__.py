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
from common.engines.model_bundle import ModelBundle, check_same_preprocessing, find_model_bundle, load_model_bundle
from common.engines.progress import ProgressBarHandler
from common.engines.quality import InputQuality
from common.engines.robustness import (
    DEFAULT_ATTACKS,
    DEFAULT_SWEEP_EPSILONS,
    AttackJob,
    RobustnessEvaluation,
    build_jobs,
    merge_results,
    shard_subjects,
)
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
    "ModelBundle",
    "check_same_preprocessing",
    "find_model_bundle",
    "load_model_bundle",
    "InputQuality",
    "DEFAULT_ATTACKS",
    "DEFAULT_SWEEP_EPSILONS",
    "AttackJob",
    "RobustnessEvaluation",
    "build_jobs",
    "merge_results",
    "shard_subjects",
]
