"""Ignite/MONAI workflow pieces: mixed-precision and single-volume inferers, checkpoints, progress, per-subject
metrics, and the robustness evaluation with its attack jobs and results files."""

from __future__ import annotations

from common.engines.attack_jobs import DEFAULT_ATTACKS, DEFAULT_SWEEP_EPSILONS, Adversarial, AttackJob, build_jobs
from common.engines.checkpoint import (
    AtomicCheckpointSaver,
    ResumeFromLatest,
    WeightsLoader,
    latest_checkpoint,
    load_weights,
)
from common.engines.inferers import AutocastInferer, PairedForward, PairedForwardInferer
from common.engines.model_bundle import ModelBundle, check_same_preprocessing, find_model_bundle, load_model_bundle
from common.engines.precision import PRECISIONS, PrecisionChoice, choose_precision
from common.engines.progress import ProgressBarHandler
from common.engines.quality import InputQuality
from common.engines.results_io import KEY_COLUMNS, RESULTS_NAME, SETTINGS_NAME, merge_results, shard_subjects
from common.engines.robustness import RobustnessEvaluation
from common.engines.subject_metrics import SubjectDiceWriter
from common.engines.validation import ValidateAtEnd

__all__ = [
    "AtomicCheckpointSaver",
    "AutocastInferer",
    "PairedForward",
    "PairedForwardInferer",
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
    "PRECISIONS",
    "PrecisionChoice",
    "choose_precision",
    "DEFAULT_ATTACKS",
    "DEFAULT_SWEEP_EPSILONS",
    "Adversarial",
    "AttackJob",
    "build_jobs",
    "KEY_COLUMNS",
    "RESULTS_NAME",
    "SETTINGS_NAME",
    "merge_results",
    "shard_subjects",
    "RobustnessEvaluation",
]
