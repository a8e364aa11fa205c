"""Adversarial attacks on segmentation networks: FGSM, i-FGSM, ti-FGSM (Liu et al. 2021, eqs. 1-3), PGD and APGD (in
the L-inf or the L2 threat model), and the random-sign noise control.

Every attack is a callable ``adv = attack(model, images, labels)`` with the settings of :class:`Attack`.
"""

from __future__ import annotations

from common.attacks.apgd import APGD, apgd_checkpoints
from common.attacks.base import (
    LOSSES,
    NORMS,
    STOP_CRITERIA,
    Attack,
    AttackProbe,
    AttackStep,
    StopCriterion,
    ThreatModel,
)
from common.attacks.fgsm import FGSM
from common.attacks.ifgsm import IterativeFGSM
from common.attacks.noise import RandomSign
from common.attacks.pgd import PGD
from common.attacks.registry import ATTACKS, make_attack
from common.attacks.tifgsm import TargetedIterativeFGSM

__all__ = [
    "APGD",
    "Attack",
    "AttackProbe",
    "AttackStep",
    "FGSM",
    "IterativeFGSM",
    "LOSSES",
    "NORMS",
    "PGD",
    "RandomSign",
    "STOP_CRITERIA",
    "StopCriterion",
    "TargetedIterativeFGSM",
    "ThreatModel",
    "ATTACKS",
    "apgd_checkpoints",
    "make_attack",
]
