"""APGD (Croce & Hein 2020, Algorithm 1), L-inf or L2, for segmentation: per-sample step sizes, best iterate by Dice."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from common.attacks.base import Attack, AttackProbe, AttackStep, ThreatModel
from common.attacks.pgd import _BestIterate, _column, _random_start, _start_search, _traced
from common.utils.validation import check_int, check_number

__all__ = ["APGD", "apgd_checkpoints"]


def apgd_checkpoints(steps: int) -> list[int]:
    """The checkpoints ``w_j = ceil(p_j * steps)`` of APGD (Croce & Hein 2020, Sec. 3.2), in increasing order.

    ``p_0 = 0``, ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` while ``p_j <= 1``: the
    intervals start at 22 % of the budget and shrink by 3 % of it each time, down to 6 %. Checkpoints that round to
    the same step are listed once.

    Args:
        steps: the number of iterations ``N_iter``, >= 1.

    Returns:
        The distinct ``w_j``, starting with 0.

    Raises:
        RobustsegError: if ``steps`` is not an integer >= 1.
    """
    steps = check_int("steps", steps, 1)
    fractions = [0.0, 0.22]
    while True:
        following = fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06)
        if following > 1 + 1e-9:
            break
        fractions.append(following)
    # round first: 0.41 * 100 is 41.000000000000007 in floating point, and its ceiling must be 41
    return sorted({math.ceil(round(p * steps, 9)) for p in fractions})


class APGD(Attack):
    """Auto-PGD, L-inf or L2 (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", ICML, Algorithm 1 and Sec. 3), for segmentation.

    From ``x_0`` (a random point of the threat model), with step size ``eta = 2 * epsilon`` (``alpha``)::

        x_1 = P(x_0 + eta d(grad f(x_0)))
        z_{k+1} = P(x_k + eta d(grad f(x_k)))
        x_{k+1} = P(x_k + 0.75 (z_{k+1} - x_k) + 0.25 (x_k - x_{k-1}))

    where ``P`` projects onto the epsilon-ball intersected with the valid intensity range, ``f`` is the attack loss
    and ``d`` the steepest-ascent direction of the norm: ``sign(g)`` for L-inf (``norm="linf"``, default), and
    ``g / ||g||_2`` per sample for L2 (``norm="l2"``; ``P`` is then the projection onto the L2 ball followed by the
    clamp to the range, as in the L2 branch of the authors' code, ``fra31/auto-attack``, ``autopgd_base.py``). The
    initial step ``2 * epsilon``, the momentum, the checkpoints and the step halving are the same for both norms, as
    in that code. The L2 start is uniform in the ball (for a BraTS volume within 1e-5 of the sphere, where that code
    starts).

    At each checkpoint ``w_j`` (:func:`apgd_checkpoints`) the step size is halved and the iterate restarted from the
    point of highest loss so far if (1) fewer than ``rho = 0.75`` of the steps since the last checkpoint
    increased the loss, or (2) neither the step size nor the highest loss changed since the last checkpoint.
    Everything is per sample (its step size, momentum, best-loss point and checkpoint tests), so a batch gives what
    each sample gives alone.

    Best iterate: the loss drives the step-size schedule, but the result is, per sample, the iterate (of all
    restarts, the random starts included) with the lowest scored hard Dice (the mean over WT, TC and ET of the region
    Dice of the argmax prediction against the ground truth, :func:`~common.attacks.base.hard_dice`), ties broken by
    the highest loss, as APGD keeps the point of lowest accuracy rather than highest loss. The scores come from the
    forward passes of the gradients; the last iterate gets one forward pass without gradient, so ``steps``
    iterations cost ``steps`` gradients and ``steps + 1`` forward passes per restart.

    Restarts: ``restarts`` random starts (uniform in the ball; its own ``torch.Generator`` seeded with ``seed``, one
    draw per restart shared by the samples, as :class:`~common.attacks.pgd.PGD`); per sample the best iterate over all
    of them is kept.

    Radius schedule (``radius_schedule``, off by default; after SEA, Croce, Singh & Hein 2024, which attacks at a
    larger radius first and then at epsilon): with ``radius_schedule=r`` (> 1) the attack starts in the ball of radius
    ``r * epsilon`` (step size ``r * alpha``), and the radius shrinks linearly to ``epsilon`` over the first half of
    the iterations (``ceil(steps / 2)``), then stays there. Each iterate is projected onto its own radius; the
    point of highest loss is kept among the iterates of the current radius only (a point of a larger ball is not
    feasible any more); only iterates at radius ``epsilon`` can be the result. The per-step records of the first half
    therefore hold iterates outside the epsilon-ball.

    The loss's ``set_step(t, steps)`` (SegPGD) is called before the gradient of step ``t``. Early stopping (``stop``)
    is checked at each gradient pass, as in the base class; a stopped sample keeps its best iterate so far and skips
    the later steps and restarts.

    Args:
        epsilon: radius of the L-inf ball, or of the L2 ball with ``norm="l2"`` (relative to each sample's maximum
            absolute intensity by default).
        steps: number of iterations ``N_iter`` per restart (the paper uses 100).
        alpha: initial step size; default ``2 * epsilon``.
        restarts: number of random starts, >= 1.
        seed: seed of the random starts.
        radius_schedule: ``None`` (default) or the factor ``r > 1`` of the starting radius (see above); for either
            norm (the balls of both shrink the same way).
        kwargs: the common settings of :class:`~common.attacks.base.Attack` (``norm`` among them).

    Raises:
        RobustsegError: if ``restarts`` < 1, ``seed`` is not an integer or ``radius_schedule`` is not ``None`` or a
            finite number > 1.

    Example::

        attack = APGD(epsilon=0.05, steps=100, loss="js")
        adv = attack(model, images, labels)
        adv_l2 = APGD(epsilon=0.5, norm="l2", steps=100)(model, images, labels)   # ||adv_l2 - images||_2 <= 0.5 * max
    """

    name = "APGD"
    returns_best_iterate = True
    norms = ("linf", "l2")

    momentum = 0.75
    """The weight ``alpha`` of the new step against the last one (the paper's 0.75)."""
    rho = 0.75
    """Condition 1: the fraction of steps since the last checkpoint that must have increased the loss."""

    def __init__(
        self,
        epsilon: float,
        steps: int = 100,
        alpha: float | None = None,
        restarts: int = 1,
        seed: int = 0,
        radius_schedule: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(epsilon, steps=steps, alpha=alpha, **kwargs)
        self.restarts = check_int("restarts", restarts, 1)
        self.seed = check_int("seed", seed)
        if radius_schedule is not None:
            radius_schedule = check_number(
                "radius_schedule", radius_schedule, 1, min_inclusive=False, hint="the starting radius / epsilon"
            )
        self.radius_schedule = radius_schedule

    def default_alpha(self, epsilon: float, steps: int) -> float:
        """The paper's initial step size, ``2 * epsilon``."""
        return 2 * epsilon

    @property
    def settings(self) -> dict[str, Any]:
        return {
            **super().settings,
            "restarts": self.restarts,
            "seed": self.seed,
            "radius_schedule": self.radius_schedule,
        }

    def radius_factor(self, iterate: int) -> float:
        """The radius of iterate ``iterate`` (0: the start), as a multiple of ``epsilon``."""
        if self.radius_schedule is None:
            return 1.0
        length = math.ceil(self.steps / 2)
        return max(1.0, self.radius_schedule - (self.radius_schedule - 1.0) * iterate / length)

    def run(
        self,
        model: Callable[..., Tensor],
        clean: Tensor,
        labels: Tensor,
        threat: ThreatModel,
        step_size: Tensor | float,
        callback: Callable[[AttackStep], None] | None,
    ) -> Tensor:
        generator, active, tracker = _start_search(self, clean, labels)
        callback = _traced(callback, tracker)
        scale = self._scale(clean)

        def ball(iterate: int) -> ThreatModel:
            factor = self.radius_factor(iterate)
            return threat if factor == 1.0 else self.threat_model(clean, factor * self.epsilon * scale)

        for restart in range(self.restarts):
            start = _random_start(generator, ball(0), active, tracker)
            self._ascend(model, start, labels, ball, step_size, callback, restart, active, tracker)
        return tracker.best

    def _ascend(
        self,
        model: Callable[..., Tensor],
        start: Tensor,
        labels: Tensor,
        ball: Callable[[int], ThreatModel],
        step_size: Tensor | float,
        callback: Callable[[AttackStep], None] | None,
        restart: int,
        active: Tensor | None,
        tracker: _BestIterate,
    ) -> None:
        """One run of Algorithm 1 from ``start``; ``tracker`` sees every iterate at radius epsilon."""
        batch, ndim, steps = len(start), start.ndim, self.steps
        records = callback is not None or self.stop_criterion is not None
        checkpoints = [w for w in apgd_checkpoints(steps) if 0 < w < steps]
        eta = torch.as_tensor(step_size * self.radius_factor(0), dtype=start.dtype, device=start.device)
        eta = eta.expand(batch, *[1] * (ndim - 1)).clone()

        if active is not None and not bool(active.any()):
            return  # every sample was stopped in an earlier restart: nothing to compute, nothing to record
        # the state at the current gradient point x_k, per sample: rows not computed keep theirs
        x = start
        rows = _rows_of(active)
        self.set_loss_step(1, steps)
        loss, grad, logits = self._gradient_rows(model, x, labels, rows)
        if rows is not None:  # samples left out of this whole run: no loss, no prediction here
            loss = loss.new_full((batch,), math.nan).index_copy(0, rows, loss)
            grad = torch.zeros_like(x).index_copy(0, rows, grad)
        zero = (grad == 0).flatten(1).float().mean(1) if records else loss
        prediction = None if callback is None or rows is not None else self.task.predict(logits)
        self._stop(1, restart, x, labels, rows, logits, loss, zero, active)
        if self.radius_factor(0) == 1.0:
            tracker.observe(rows, _take(x, rows), logits, _take(loss, rows))

        x_prev = x
        best_loss, best_x, best_grad, best_zero, best_prediction = loss, x, grad, zero, prediction
        successes = torch.zeros(batch, device=start.device)
        last_best, reduced_last, last_checkpoint = best_loss.clone(), torch.zeros_like(successes, dtype=torch.bool), 0
        for k in range(steps):
            moving = None if active is None else active.clone()
            project = ball(k + 1).project
            z = project(x + eta * self.direction(grad))
            x_new = z if k == 0 else x + self.momentum * (z - x) + (1 - self.momentum) * (x - x_prev)
            x_new = project(x_new)
            if moving is not None:
                x_new = torch.where(_column(moving, ndim), x_new, x)
            # the record of step k + 1 reports the pass at x_k, as the base class does
            record_loss, record_zero, record_prediction = loss, zero, prediction

            rows = _rows_of(moving)
            if rows is not None and len(rows) == 0:  # every sample stopped: the records carry the iterates forward
                if callback is not None:
                    callback(AttackStep(k + 1, x, record_loss, record_zero, restart, moving, record_prediction))
                continue
            if k + 1 < steps:
                self.set_loss_step(k + 2, steps)
                new_loss, new_grad, new_logits = self._gradient_rows(model, x_new, labels, rows)
            else:  # the last iterate needs its score, not its gradient
                new_loss, new_grad, new_logits = self._forward_rows(model, x_new, labels, rows)
            computed = torch.ones(batch, dtype=torch.bool, device=start.device) if moving is None else moving
            new_loss = _put(loss, rows, new_loss)
            if new_grad is not None:
                grad = _put(grad, rows, new_grad)
                if records:
                    zero = _put(zero, rows, (new_grad == 0).flatten(1).float().mean(1))
            if callback is not None and prediction is not None:
                prediction = _put(prediction, rows, self.task.predict(new_logits))
            successes += (computed & (new_loss > loss)).float()
            if self.radius_factor(k + 1) == 1.0:
                tracker.observe(rows, _take(x_new, rows), new_logits, _take(new_loss, rows))
            if k + 1 < steps:
                self._stop(k + 2, restart, x_new, labels, rows, new_logits, new_loss, zero, active)
            x_prev, x, loss = x, x_new, new_loss

            # the point of highest loss: among the iterates of the current radius only
            shrunk = self.radius_factor(k + 1) != self.radius_factor(k)
            higher = computed & ((new_loss > best_loss) | torch.tensor(shrunk, device=start.device))
            best_loss = torch.where(higher, new_loss, best_loss)
            best_x = torch.where(_column(higher, ndim), x, best_x)
            best_grad = torch.where(_column(higher, ndim), grad, best_grad)
            if records:
                best_zero = torch.where(higher, zero, best_zero)
            if prediction is not None and best_prediction is not None:
                best_prediction = torch.where(_column(higher, ndim), prediction, best_prediction)

            if k + 1 in checkpoints:
                interval = k + 1 - last_checkpoint
                oscillating = successes < self.rho * interval
                stalled = ~reduced_last & (best_loss == last_best)
                reduce = computed & (oscillating | stalled)
                if active is not None:
                    reduce &= active
                eta = torch.where(_column(reduce, ndim), eta / 2, eta)
                x = torch.where(_column(reduce, ndim), best_x, x)
                grad = torch.where(_column(reduce, ndim), best_grad, grad)
                loss = torch.where(reduce, best_loss, loss)
                if records:
                    zero = torch.where(reduce, best_zero, zero)
                if prediction is not None and best_prediction is not None:
                    prediction = torch.where(_column(reduce, ndim), best_prediction, prediction)
                reduced_last, last_best, last_checkpoint = reduce, best_loss.clone(), k + 1
                successes = torch.zeros_like(successes)
            if callback is not None:
                # as in the base class: the samples out of the batch at the gradient pass of this step
                mask = None if moving is None or bool(moving.all()) else moving
                callback(AttackStep(k + 1, x, record_loss, record_zero, restart, mask, record_prediction))

    def _gradient_rows(
        self, model: Callable[..., Tensor], x: Tensor, labels: Tensor, rows: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Losses, gradients and logits of the rows ``rows`` of ``x`` (``None``: all)."""
        return self._loss_and_gradient(model, _take(x, rows), _take(labels, rows))

    def _forward_rows(
        self, model: Callable[..., Tensor], x: Tensor, labels: Tensor, rows: Tensor | None
    ) -> tuple[Tensor, None, Tensor]:
        """Losses and logits of the rows ``rows`` of ``x``, from a forward pass without gradient."""
        with torch.no_grad():
            logits = self.logits(model, _take(x, rows))
            return self.sample_losses(logits, _take(labels, rows)), None, logits

    def _stop(
        self,
        step: int,
        restart: int,
        x: Tensor,
        labels: Tensor,
        rows: Tensor | None,
        logits: Tensor,
        loss: Tensor,
        zero: Tensor,
        active: Tensor | None,
    ) -> None:
        """Take the samples that the stop criterion stops at this gradient pass out of ``active`` (``loss`` and
        ``zero`` are per sample of the whole batch; ``logits`` of the rows computed)."""
        if self.stop_criterion is None or active is None or len(logits) == 0:
            return
        index = rows if rows is not None else torch.arange(len(x), device=x.device)
        probe = AttackProbe(
            step, restart, _take(x, rows), logits, _take(labels, rows), _take(loss, rows), _take(zero, rows)
        )
        active[index[self._stopped(probe)]] = False


def _rows_of(active: Tensor | None) -> Tensor | None:
    """The indices of the active samples; ``None`` when every sample is active."""
    return None if active is None or bool(active.all()) else active.nonzero()[:, 0]


def _take(value: Tensor, rows: Tensor | None) -> Tensor:
    return value if rows is None else value[rows]


def _put(full: Tensor, rows: Tensor | None, part: Tensor) -> Tensor:
    return part if rows is None else full.index_copy(0, rows, part.to(full.dtype))
