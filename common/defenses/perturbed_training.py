"""Training on a perturbed and a clean batch: FGSM adversarial training (Liu et al. 2021, eq. 9) and noise augmentation.

Eq. 9 trains on ``beta * L(x, y) + (1 - beta) * L(x_adv, y)`` with ``x_adv`` an FGSM example of the current model.
The paper, short of GPU memory, "first generated adversarial examples based on the current model, and then performed
forward and backward propagation using these adversarial examples. Then, the model was updated according to the
original batch of data"; its noise augmentation baseline did the same with uniform noise in place of ``x_adv``. We
do exactly that as gradient accumulation: a forward and backward pass on the perturbed batch weighted ``1 - beta``,
a forward and backward pass on the clean batch weighted ``beta``, then ONE optimizer step. The accumulated gradient
is the gradient of eq. 9 (``x_adv`` is a constant of the parameters, as in eq. 9's usual reading), with the peak
memory of one pass; ``tests/defenses/test_perturbed_training.py`` checks the equality.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import Tensor, nn

from common.attacks import FGSM
from common.defenses.noise import _check_radius, uniform_noise
from common.defenses.training_step import TrainingStep, unwrap_network
from common.errors import RobustsegError
from common.utils.validation import check_number, check_optional_int

__all__ = ["AdversarialTrainingStep", "NoiseAugmentationStep", "PerturbedTrainingStep"]

Perturbation = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _check_beta(beta: float) -> float:
    return check_number("beta", beta, 0.0, 1.0, hint="the weight of the clean loss, eq. 9")


class PerturbedTrainingStep(TrainingStep):
    """``iteration_update`` for ``SupervisedTrainer``: eq. 9's loss on a perturbed and a clean batch, one update.

    For each batch ``(x, y)``: ``x_p = perturbation(model, x, y)`` on the current model; forward and backward of
    ``(1 - beta) * L(x_p, y)``; forward and backward of ``beta * L(x, y)``; one optimizer step. ``L`` is the
    trainer's ``loss_function`` (its ``.mean()``, as MONAI takes it) and forward passes go through the trainer's
    ``inferer``. The gradient equals that of ``beta * L(x, y) + (1 - beta) * L(x_p, y)`` (``x_p`` detached).

    Output (``engine.state.output``): ``image`` and ``label`` the clean batch, ``pred`` the clean logits, ``loss``
    the combined eq. 9 value; also ``loss_clean`` and ``loss_perturbed`` (detached). Events: ``FORWARD_COMPLETED``
    after the clean forward pass, ``LOSS_COMPLETED`` when ``loss`` is set, ``BACKWARD_COMPLETED`` once both
    gradients are accumulated (before the optimizer step), ``MODEL_COMPLETED`` at the end. With a network that has
    dropout the two passes draw different dropout masks, as any two forward passes do.

    Args:
        perturbation: ``perturbation(model, images, labels) -> images``, called with the unwrapped network (in train
            mode) and the clean batch; its result is detached. Subclasses may instead override :meth:`perturb`.
        beta: weight of the clean loss in [0, 1]; the paper's 0.5.

    Raises:
        RobustsegError: if ``beta`` is outside [0, 1] or ``perturbation`` is not callable.

    Example::

        step = PerturbedTrainingStep(lambda model, x, y: x + 0.01 * torch.randn_like(x), beta=0.5)
        trainer = SupervisedTrainer(..., iteration_update=step)
    """

    def __init__(self, perturbation: Perturbation | None = None, beta: float = 0.5) -> None:
        self.beta = _check_beta(beta)
        overridden = type(self).perturb is not PerturbedTrainingStep.perturb
        if not (callable(perturbation) or (perturbation is None and overridden)):
            raise RobustsegError(
                f"perturbation must be a callable (model, images, labels) -> images, got {type(perturbation).__name__}."
            )
        self.perturbation = perturbation

    def perturb(self, engine: Any, images: Tensor, labels: Tensor) -> Tensor:
        """The perturbed batch for this iteration (default: ``perturbation(network, images, labels)``)."""
        assert self.perturbation is not None  # checked in __init__
        return self.perturbation(unwrap_network(engine.network), images, labels)

    def compute(self, engine: Any, inputs: Tensor, targets: Tensor, args: tuple, kwargs: dict) -> None:
        perturbed = self.perturb(engine, inputs, targets).detach()
        # perturbed batch first, as the paper did; its graph is freed before the clean pass
        with self.autocast(engine):
            logits = self.forward(engine, engine.network, perturbed, args, kwargs)
            perturbed_loss = engine.loss_function(logits, targets).mean()
        self.backward(engine, (1.0 - self.beta) * perturbed_loss)
        del logits

        with self.autocast(engine):
            engine.state.output[Keys.PRED] = self.forward(engine, engine.network, inputs, args, kwargs)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            clean_loss = engine.loss_function(engine.state.output[Keys.PRED], targets).mean()
            # eq. 9's value; only the clean term still has a graph, so backward adds beta * grad L(x)
            engine.state.output[Keys.LOSS] = self.beta * clean_loss + (1.0 - self.beta) * perturbed_loss.detach()
            engine.state.output["loss_clean"] = clean_loss.detach()
            engine.state.output["loss_perturbed"] = perturbed_loss.detach()
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self.backward(engine, engine.state.output[Keys.LOSS])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(perturbation={self.perturbation!r}, beta={self.beta})"


class AdversarialTrainingStep(PerturbedTrainingStep):
    """FGSM adversarial training, the paper's eq. 9: ``beta * L(x) + (1 - beta) * L(FGSM_epsilon(x))``.

    Each batch's adversarial example is ``FGSM(epsilon, loss=<trainer loss>, inferer=<trainer inferer>)`` on the
    current network (:class:`~common.attacks.FGSM`: relative to each sample's maximum intensity, clipped to the
    sample's clean range, computed in eval mode -- dropout off -- with the network left exactly as found), so the
    attack maximises the same loss ``L`` the network is trained on. See :class:`PerturbedTrainingStep` for the
    two-pass update and the output.

    Args:
        epsilon: FGSM step size, in [0, 1] as a fraction of each sample's maximum intensity (``relative``); the
            paper trains with 0.01, 0.05 and 0.1.
        beta: weight of the clean loss in [0, 1]; the paper's 0.5.
        relative: whether ``epsilon`` is relative to each sample's maximum absolute intensity (else absolute).

    Raises:
        RobustsegError: if ``epsilon`` < 0 (or > 1 with ``relative``) or ``beta`` is outside [0, 1].

    Example::

        "train#trainer#iteration_update": {"_target_": "common.defenses.AdversarialTrainingStep", "epsilon": 0.05}
    """

    def __init__(self, epsilon: float, beta: float = 0.5, relative: bool = True) -> None:
        super().__init__(None, beta)
        self.epsilon = FGSM(epsilon, relative=relative).epsilon  # FGSM checks epsilon with the attacks' messages
        self.relative = bool(relative)

    def attack(self, engine: Any) -> FGSM:
        """The FGSM attack of this iteration: the trainer's loss and inferer."""
        loss_function = engine.loss_function
        return FGSM(
            self.epsilon,
            loss=lambda logits, labels: loss_function(logits, labels).mean(),
            relative=self.relative,
            inferer=engine.inferer,
        )

    def perturb(self, engine: Any, images: Tensor, labels: Tensor) -> Tensor:
        return self.attack(engine)(unwrap_network(engine.network), images, labels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epsilon={self.epsilon}, beta={self.beta}, relative={self.relative})"


class NoiseAugmentationStep(PerturbedTrainingStep):
    """Uniform-noise augmentation as the paper ran it: a noisy then a clean pass per batch, one update.

    "For each batch of input data, we first trained the model with the perturbed images and then trained the model
    with the clean images, in order to obtain a fair comparison to adversarial training": the scheme of
    :class:`PerturbedTrainingStep` with :func:`~common.defenses.uniform_noise` (uniform in the L-infinity ball of
    ``radius``, relative to each sample's maximum, clipped to its clean range) in place of the FGSM example.

    Args:
        radius: the noise radius, the paper's 0.01 (a fraction of each sample's maximum intensity when ``relative``).
        beta: weight of the clean loss in [0, 1]; 0.5 as for adversarial training.
        seed: ``None`` draws from the global torch RNG (seeded by ``monai.utils.set_determinism``); an integer makes
            the noise of iteration ``k`` (on distributed rank ``r``) a function of ``(seed, r, k)`` only, so a run
            resumed from a checkpoint draws the same noise as an uninterrupted one.
        relative: whether ``radius`` is relative to each sample's maximum absolute intensity.
        clip: clip each noisy sample to its clean ``[min, max]``.

    Raises:
        RobustsegError: if ``radius`` < 0 (or > 1 with ``relative``), ``beta`` is outside [0, 1] or ``seed`` is not
            ``None`` or a non-negative integer.

    Example::

        "train#trainer#iteration_update": {"_target_": "common.defenses.NoiseAugmentationStep", "radius": 0.01}
    """

    def __init__(
        self, radius: float = 0.01, beta: float = 0.5, seed: int | None = None, relative: bool = True, clip: bool = True
    ) -> None:
        super().__init__(None, beta)
        self.relative = bool(relative)
        self.radius = _check_radius(radius, self.relative)
        self.seed = check_optional_int("seed", seed, 0)
        self.clip = bool(clip)

    def generator(self, iteration: int, device: torch.device) -> torch.Generator | None:
        """The generator of one iteration's noise (``None``: the global RNG)."""
        if self.seed is None:
            return None
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        state = int(np.random.SeedSequence([self.seed, rank, int(iteration)]).generate_state(1, dtype=np.uint64)[0])
        return torch.Generator(device=device).manual_seed(state)

    def perturb(self, engine: Any, images: Tensor, labels: Tensor) -> Tensor:
        generator = self.generator(engine.state.iteration, images.device)
        return uniform_noise(images, self.radius, self.relative, self.clip, generator=generator)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(radius={self.radius}, beta={self.beta}, seed={self.seed}, "
            f"relative={self.relative}, clip={self.clip})"
        )
