"""Defences of Liu et al. (2021): defensive distillation, FGSM adversarial training (eq. 9), noise augmentation.

The training steps are ``iteration_update`` callables for MONAI's ``SupervisedTrainer``; a defence bundle's
``train.json`` sets ``train#trainer#iteration_update`` to one of them. :class:`RandSmoothingNoised`, the Gaussian
noise of randomized smoothing as a MONAI transform, trains the base networks of certification (the ``gaussaug``
bundles).
"""

from __future__ import annotations

from common.defenses.distillation import DistillationStep
from common.defenses.distillation_record import (
    DistillationRecord,
    centred_logit_norm,
    distillation_recipe,
    measure_logit_norms,
)
from common.defenses.gaussian_noise import RandSmoothingNoise, RandSmoothingNoised
from common.defenses.noise import RandUniformNoise, RandUniformNoised, uniform_noise
from common.defenses.perturbed_training import AdversarialTrainingStep, NoiseAugmentationStep, PerturbedTrainingStep
from common.defenses.teacher import load_teacher
from common.defenses.training_step import TrainingStep, unwrap_network

__all__ = [
    "AdversarialTrainingStep",
    "DistillationRecord",
    "DistillationStep",
    "NoiseAugmentationStep",
    "PerturbedTrainingStep",
    "RandSmoothingNoise",
    "RandSmoothingNoised",
    "RandUniformNoise",
    "RandUniformNoised",
    "TrainingStep",
    "centred_logit_norm",
    "distillation_recipe",
    "load_teacher",
    "measure_logit_norms",
    "uniform_noise",
    "unwrap_network",
]
