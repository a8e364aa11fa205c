"""Attack jobs of the robustness evaluation: the paper's attacks as runs on a batch of subjects, each scored at its
iterates.

An :class:`AttackJob` is one attack run on a batch (Liu et al. 2021, Table 1 and Figs. 3-5): a *sweep* is FGSM at
several epsilons from one gradient (:meth:`common.attacks.FGSM.sweep`), an *iterative* job is one attack whose every
iterate is scored. :func:`build_jobs` turns the evaluation's attack specs into the jobs of one threat (white-box, or
adaptive with a distillation temperature); :class:`~common.engines.robustness.RobustnessEvaluation` runs them.

Example::

    jobs = build_jobs(DEFAULT_ATTACKS, "FGSM", DEFAULT_SWEEP_EPSILONS, epsilon=0.05, loss="soft_dice")
    adversarials = jobs[0].run(network, images, labels)   # one Adversarial per sweep epsilon, (B, C, *spatial)
    first_subject = [a.sample(0) for a in adversarials]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from common.attacks.base import Attack, AttackStep
from common.attacks.fgsm import FGSM
from common.attacks.registry import make_attack
from common.errors import RobustsegError
from common.utils.validation import check_number

__all__ = [
    "DEFAULT_ATTACKS",
    "DEFAULT_SWEEP_EPSILONS",
    "Adversarial",
    "AttackJob",
    "build_jobs",
    "reusable_predictions",
]

DEFAULT_ATTACKS: tuple[dict[str, Any], ...] = (
    {"name": "FGSM"},
    {"name": "i-FGSM", "steps": 10},
    {"name": "ti-FGSM", "steps": 10, "target": 1},
)
"""The paper's Table 1 attacks (each takes ``epsilon`` and ``loss`` from the evaluation unless given)."""
DEFAULT_SWEEP_EPSILONS: tuple[float, ...] = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1)
"""FGSM sweep of the defence figures and Tables 2-3 (0.05 and 0.1 included; epsilon 0 is the clean rows)."""


@dataclass(frozen=True)
class Adversarial:
    """Scored adversarial inputs of a batch: which attack made them, at which epsilon and iterate, in how much time.

    Attributes:
        attack: the attack.
        epsilon: its epsilon.
        iteration: the iterate (1 for FGSM).
        image: the adversarial inputs ``(B, C, *spatial)``.
        seconds: the attack's wall time up to this iterate per subject (the batch's time divided by ``B``).
        zero_grad_fractions: each sample's fraction ``(B,)`` of exactly-zero input gradients at the first step.
        predictions: the attacked model's BraTS label maps ``(B, 1, *spatial)`` of :attr:`image`, from the attack's
            own forward pass at the next step (the argmax of the logits it took the next gradient of), or ``None``
            (the final iterate, a sweep, a restart's best).
        trace: attacks that return their best iterate (PGD, APGD): per sample, the best scored mean Dice found after
            each gradient pass, ``(B, restarts * steps)`` (:attr:`common.attacks.AttackStep.best_dices` of every
            record); ``None`` otherwise.
    """

    attack: Attack
    epsilon: float
    iteration: int
    image: Tensor
    seconds: float
    zero_grad_fractions: Tensor
    predictions: Tensor | None = None
    trace: Tensor | None = None

    @property
    def loss(self) -> str:
        """The name of the attack's loss (the CSV's ``loss``)."""
        return _loss_name(self.attack)

    @property
    def zero_grad_fraction(self) -> float:
        """The zero-gradient fraction of a one-sample batch (the batch mean otherwise)."""
        return float(self.zero_grad_fractions.mean())

    def sample(self, index: int) -> Adversarial:
        """The one-sample :class:`Adversarial` of sample ``index`` of the batch."""
        return replace(
            self,
            image=self.image[index : index + 1],
            zero_grad_fractions=self.zero_grad_fractions[index : index + 1],
            predictions=None if self.predictions is None else self.predictions[index : index + 1],
            trace=None if self.trace is None else self.trace[index : index + 1],
        )


def reusable_predictions(
    adversarials: Sequence[Adversarial], amp: bool, amp_dtype: str = "bfloat16"
) -> list[Tensor | None]:
    """The attacked model's predictions of each adversarial input where its attack's own forward pass gave them.

    They score an iterate without another forward pass when the attack saw the model as scoring does: the same
    precision (``amp``, the scoring's autocast) and no inferer of its own (a temperature does not move the argmax).
    Equal to a separate pass up to the float rounding of another batch composition.

    Args:
        adversarials: the inputs to score (of the model the attacks ran on: not transfer inputs).
        amp: whether scoring runs the model under autocast.
        amp_dtype: the scoring's autocast dtype, ``"bfloat16"`` or ``"float16"``.

    Returns:
        Per input, its label map ``(1 or B, 1, *spatial)``, or ``None`` where a forward pass is needed.
    """
    dtype = torch.float16 if amp_dtype == "float16" else torch.bfloat16
    same = all(a.attack.amp == amp and (not amp or a.attack.amp_dtype == dtype) for a in adversarials)
    if not same or any(a.attack.inferer is not None for a in adversarials):
        return [None] * len(adversarials)
    return [a.predictions for a in adversarials]


def _loss_name(attack: Attack) -> str:
    loss = attack.loss
    return loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)


@dataclass(frozen=True)
class AttackJob:
    """One attack run on a batch of inputs, scored at one or more adversarial inputs each.

    A *sweep* job is FGSM at several epsilons from one gradient (:meth:`FGSM.sweep`); an *iterative* job is one
    attack whose every iterate is scored (the result only for attacks that return their best iterate, PGD and APGD:
    their last iterate is not their result).

    Attributes:
        attacks: a sweep's FGSM attacks, one per epsilon in ascending order (identical settings otherwise), or the
            one attack of an iterative job.
        sweep: whether this is a sweep.
        table_epsilons: epsilons at which this job is a Table 1 attack (its examples are saved there).
    """

    attacks: tuple[Attack, ...]
    sweep: bool
    table_epsilons: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        return type(self.attacks[0]).name

    @property
    def loss(self) -> str:
        return _loss_name(self.attacks[0])

    @property
    def steps(self) -> int:
        return self.attacks[0].steps

    @property
    def final_iteration(self) -> int:
        """The iteration of the rows that score the attack's result (1 for a sweep)."""
        return 1 if self.sweep else self.steps

    @property
    def uses_gradient(self) -> bool:
        """Whether the attack takes the model's gradient (not the random-noise control)."""
        return self.attacks[0].uses_gradient

    @property
    def per_iteration(self) -> bool:
        """Whether every iterate gets a row (iterative attacks whose result is their last iterate)."""
        return not self.sweep and not self.attacks[0].returns_best_iterate

    def slots(self, final_only: bool = False) -> list[tuple[Attack, float, int]]:
        """The (attack, epsilon, iteration) of each row this job produces (``final_only`` for transfer rows)."""
        if self.sweep:
            return [(a, a.epsilon, 1) for a in self.attacks]
        attack = self.attacks[0]
        if self.per_iteration and not final_only:
            return [(attack, attack.epsilon, k) for k in range(1, attack.steps + 1)]
        return [(attack, attack.epsilon, attack.steps)]

    def run(
        self, model: Callable[..., Tensor], image: Tensor, label: Tensor, final_only: bool = False
    ) -> list[Adversarial]:
        """Run the attack on a batch and return the adversarial inputs of :meth:`slots`, in that order.

        Each sample is attacked on its own (:class:`~common.attacks.Attack`): sample ``i`` of the result is what a
        batch of sample ``i`` alone gives.

        Args:
            model: the network attacked.
            image: clean inputs (B, C, *spatial).
            label: BraTS labels (B, 1, *spatial).
            final_only: keep only the final iterate (transfer).

        Returns:
            One :class:`Adversarial` per slot, with the attack time up to it (per subject: divided by B).
        """
        records: list[AttackStep] = []
        times: list[float] = []
        batch = len(image)
        start = time.perf_counter()
        # a job whose iterates are not rows reads only the first record's zero-gradient fractions and every record's
        # best Dice: keeping each record's iterate and predictions would hold steps x the batch's images (80 steps of
        # four 48^3 volumes: 0.6 GB; of one BraTS-sized volume, 100 steps: 14 GB)
        keep_iterates = self.per_iteration and not final_only
        zeros: list[Tensor] = []  # the first record's zero-gradient fractions
        best: list[Tensor] = []  # every record's best Dice so far (PGD, APGD)

        def record(step: AttackStep) -> None:  # kept trivial: its time counts in the attack's
            times.append((time.perf_counter() - start) / batch)
            if keep_iterates:
                records.append(step)
            if not zeros:
                zeros.append(step.zero_grad_fractions)
            if step.best_dices is not None:
                best.append(step.best_dices)

        if self.sweep:
            epsilons = [a.epsilon for a in self.attacks]
            sweep = self.attacks[0].sweep  # type: ignore[attr-defined]
            adversarials = sweep(model, image, label, epsilons, callback=record)
            zero = zeros[0]
            return [
                Adversarial(a, a.epsilon, 1, adv, t, zero)
                for a, adv, t in zip(self.attacks, adversarials, times, strict=True)
            ]
        attack = self.attacks[0]
        final = attack(model, image, label, callback=record)
        total = (time.perf_counter() - start) / batch
        zero = zeros[0]
        if keep_iterates:
            # iterate k was the input of step k + 1, whose forward pass predicted it
            seen = [r.predictions for r in records[1:]] + [None]
            return [
                Adversarial(attack, attack.epsilon, r.step, r.adversarial, t, zero, predicted)
                for r, t, predicted in zip(records, times, seen, strict=True)
            ]
        trace = torch.stack(best, dim=1) if best else None
        return [Adversarial(attack, attack.epsilon, attack.steps, final, total, zero, trace=trace)]


def _spec(item: Any, what: str) -> dict[str, Any]:
    if isinstance(item, str):
        return {"name": item}
    if isinstance(item, Mapping):
        return dict(item)
    raise RobustsegError(f"{what}: each attack must be a spec {{'name': ..., settings}} or a name, got {item!r}.")


def _fgsm_group(attack: Attack) -> str:
    """An FGSM's settings without epsilon: FGSMs that agree on it share one gradient (one sweep)."""
    return repr({k: v for k, v in attack.settings.items() if k != "epsilon"})


def _check_epsilons(epsilons: Any, what: str) -> list[float]:
    if isinstance(epsilons, (str, bytes)) or not isinstance(epsilons, Iterable):
        raise RobustsegError(f"{what} must be a list of numbers, got {epsilons!r}.")
    return [check_number(f"{what}: epsilon", eps) for eps in epsilons]


def build_jobs(
    attacks: Sequence[Mapping[str, Any] | str],
    sweep: Mapping[str, Any] | str | None,
    sweep_epsilons: Sequence[float],
    epsilon: float,
    loss: str,
    attack_amp: bool | str = False,
    temperature: float | None = None,
) -> list[AttackJob]:
    """The attack jobs of one threat: FGSMs grouped into sweeps, then the iterative attacks, in the given order.

    Args:
        attacks: the Table 1 attack specs (``epsilon``, ``loss`` and ``amp`` default to the arguments).
        sweep: the FGSM spec of the epsilon sweep, or ``None`` for no sweep.
        sweep_epsilons: the sweep's epsilons.
        epsilon: the default epsilon of the attack specs.
        loss: the default attack loss.
        attack_amp: the default ``amp`` of the attacks: ``False``/``"fp32"``, ``True``/``"bf16"`` or ``"fp16"``.
        temperature: divide the logits by this in every attack (the adaptive threat); ``None`` for white-box.

    Returns:
        The jobs.

    Raises:
        RobustsegError: for an unknown attack name or setting, a bad epsilon, a sweep that is not FGSM, an L2 attack,
            or two attacks that would write rows with the same key (name, loss, epsilon).
    """
    if isinstance(attacks, (str, bytes, Mapping)) or not isinstance(attacks, Sequence):
        raise RobustsegError(f"attacks must be a list of attack specs or names, got {attacks!r}.")
    overrides = {} if temperature is None else {"temperature": temperature}
    defaults = {"epsilon": epsilon, "loss": loss, "amp": attack_amp}
    groups: dict[str, tuple[list[Attack], set[float]]] = {}
    order: list[Any] = []
    if sweep is not None:
        spec = {**defaults, **_spec(sweep, "sweep")}
        epsilons = _check_epsilons(sweep_epsilons, "sweep_epsilons")
        if epsilons:
            for eps in epsilons:
                attack = make_attack({**spec, "epsilon": eps}, **overrides)
                if not isinstance(attack, FGSM):
                    raise RobustsegError(f"sweep must be an FGSM spec (one gradient for all epsilons), got {sweep!r}.")
                group = groups.setdefault(_fgsm_group(attack), ([], set()))
                if group not in order:
                    order.append(group)
                group[0].append(attack)
    for item in attacks:
        attack = make_attack({**defaults, **_spec(item, "attacks")}, **overrides)
        if attack.norm != "linf":
            # the rows of one threat share epsilon columns, tables and the worst case: an L2 radius there would be
            # read as an L-inf one
            raise RobustsegError(
                f"attacks: {attack!r} is an L2 attack; the attack lists are L-inf threat models (their epsilons, "
                "tables and worst case). L2 attacks run on the smoothed segmenter at the certified radii: "
                "certification's attacks (configs/certify.json, robustseg certify)."
            )
        if isinstance(attack, FGSM):
            group = groups.setdefault(_fgsm_group(attack), ([], set()))
            if group not in order:
                order.append(group)
            group[0].append(attack)
            group[1].add(attack.epsilon)
        else:
            order.append(attack)
    jobs: list[AttackJob] = []
    for entry in order:
        if isinstance(entry, Attack):
            jobs.append(AttackJob((entry,), sweep=False, table_epsilons=(entry.epsilon,)))
            continue
        members, table = entry
        unique = {a.epsilon: a for a in members}  # the Table 1 FGSM at a sweep epsilon is that sweep point
        ordered = tuple(unique[e] for e in sorted(unique))
        jobs.append(AttackJob(ordered, sweep=True, table_epsilons=tuple(sorted(table))))
    seen: dict[tuple[str, str, float], str] = {}
    for job in jobs:
        for attack, eps, _ in job.slots():
            key = (job.name, job.loss, eps)
            if key in seen and seen[key] != repr(attack):
                raise RobustsegError(
                    f"attacks: {job.name} with loss {job.loss} at epsilon {eps} is configured twice ({seen[key]} and "
                    f"{attack!r}); their CSV rows could not be told apart."
                )
            seen[key] = repr(attack)
    return jobs
