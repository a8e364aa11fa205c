"""What every defence's training iteration shares with MONAI's ``SupervisedTrainer._iteration``.

A defence changes what one training iteration computes (a teacher's soft labels, an extra perturbed batch) but not
how it talks to MONAI: the batch is prepared by ``engine.prepare_batch``, forward passes go through
``engine.inferer``, gradients are accumulated over ``engine.accumulation_steps`` iterations and scaled by
``engine.scaler`` under CUDA AMP, ``engine.state.output`` holds ``image``, ``label``, ``pred`` and ``loss``, and
the ``IterationEvents`` are fired, so MONAI handlers (stats, metrics, checkpoints, validation) keep working. This
module holds that plumbing once (checked against monai 1.6.1's ``SupervisedTrainer._iteration``); a defence
implements :meth:`TrainingStep.compute` only.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def _finite_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every gradient the optimizer would apply is finite (no inf, no NaN)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return all(bool(torch.isfinite(g).all()) for g in grads)

__all__ = ["TrainingStep", "unwrap_network"]


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (the network itself otherwise).

    Attacks take input gradients only; running them on the wrapper would start a gradient all-reduce that never
    completes.
    """
    if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return network.module
    return network


class TrainingStep:
    """Base class of the defences' ``iteration_update`` callables for MONAI's ``SupervisedTrainer``.

    ``step(engine, batchdata)`` does what ``SupervisedTrainer._iteration`` does around the loss -- prepare the
    batch, put the network in train mode, zero the gradients (at the start of each accumulation window), run
    :meth:`compute`, fire ``BACKWARD_COMPLETED``, step the optimizer (at the end of each accumulation window; through
    the ``GradScaler`` under CUDA AMP), fire ``MODEL_COMPLETED`` -- and returns ``engine.state.output``. Without a
    ``GradScaler`` (fp32, or bf16 autocast on a CPU) a step whose gradient holds inf or NaN is skipped, as the
    ``GradScaler`` skips it, with a warning and ``engine.state.skipped_steps`` counting it: one overflow must not turn
    every weight into NaN (it did, once in three test runs, for a distilled student under bf16 on an AVX512-BF16 CPU).

    A subclass implements :meth:`compute`, which must, using :meth:`autocast` around forward passes and losses and
    :meth:`backward` for every backward pass:

    - set ``engine.state.output["pred"]`` (the clean prediction, for metrics) and fire ``FORWARD_COMPLETED``;
    - set ``engine.state.output["loss"]`` (the value to report) and fire ``LOSS_COMPLETED``.

    ``engine.compile=True`` is handled as MONAI does: MetaTensors are passed to the network as plain tensors and
    the output ``image``, ``label`` and ``pred`` get their meta data back.
    """

    def __call__(self, engine: Any, batchdata: Any) -> dict:
        """One training iteration of ``engine`` (a MONAI ``SupervisedTrainer``) on ``batchdata``."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) == 2:
            inputs, targets = batch
            args: tuple = ()
            kwargs: dict = {}
        else:
            inputs, targets, args, kwargs = batch
        meta_inputs = meta_targets = None
        if getattr(engine, "compile", False):
            # MONAI's workaround for https://github.com/pytorch/pytorch/issues/117026
            if isinstance(inputs, MetaTensor):
                meta_inputs, inputs = inputs, inputs.as_tensor()
            if isinstance(targets, MetaTensor):
                meta_targets, targets = targets, targets.as_tensor()

        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        should_zero_grad, should_step = self._accumulation_window(engine)
        engine.network.train()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        self.compute(engine, inputs, targets, args, kwargs)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if should_step:
            if engine.amp and engine.scaler is not None:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            elif _finite_gradients(engine.optimizer):
                engine.optimizer.step()
            else:
                # what CUDA AMP's GradScaler does with a non-finite gradient: skip the step, keep the weights. Without
                # it one overflow (bf16 autocast on a CPU) turns every weight into NaN and the run saves them.
                engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
                engine.state.skipped_steps = getattr(engine.state, "skipped_steps", 0) + 1
                logger.warning("%s: iteration %d: a non-finite gradient; the optimizer step was skipped (%d so far).",
                               type(self).__name__, engine.state.iteration, engine.state.skipped_steps)  # fmt: skip

        if meta_inputs is not None:
            engine.state.output[Keys.IMAGE] = meta_inputs
            engine.state.output[Keys.PRED] = MetaTensor(
                engine.state.output[Keys.PRED], meta=meta_inputs.meta, applied_operations=meta_inputs.applied_operations
            )
        if meta_targets is not None:
            engine.state.output[Keys.LABEL] = meta_targets
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def compute(self, engine: Any, inputs: Tensor, targets: Tensor, args: tuple, kwargs: dict) -> None:
        """The defence's forward passes, losses and backward passes (see the class docstring)."""
        raise NotImplementedError

    # -- helpers for compute() -----------------------------------------------------------------------------------

    @staticmethod
    def forward(engine: Any, network: Any, inputs: Tensor, args: tuple = (), kwargs: dict | None = None) -> Tensor:
        """Logits of ``network`` through the trainer's inferer (which may autocast, e.g. ``AutocastInferer``)."""
        return engine.inferer(inputs, network, *args, **(kwargs or {}))

    @staticmethod
    def autocast(engine: Any) -> Any:
        """The context MONAI runs forward and loss in: CUDA autocast when the trainer has ``amp`` and a scaler."""
        if engine.amp and engine.scaler is not None:
            return torch.autocast("cuda", **engine.amp_kwargs)
        return nullcontext()

    @staticmethod
    def backward(engine: Any, loss: Tensor) -> None:
        """``loss.backward()`` as MONAI does it: divided by ``accumulation_steps``, scaled under CUDA AMP."""
        acc = getattr(engine, "accumulation_steps", 1)
        loss = loss / acc if acc > 1 else loss
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
        else:
            loss.backward()

    @staticmethod
    def _accumulation_window(engine: Any) -> tuple[bool, bool]:
        """``(zero the gradients now, step the optimizer now)``, as ``SupervisedTrainer`` decides them."""
        acc = getattr(engine, "accumulation_steps", 1)
        if acc <= 1:
            return True, True
        epoch_length = engine.state.epoch_length
        if epoch_length is not None:
            local_iter = (engine.state.iteration - 1) % epoch_length
            return local_iter % acc == 0, (local_iter + 1) % acc == 0 or (local_iter + 1) == epoch_length
        local_iter = engine.state.iteration - 1
        return local_iter % acc == 0, (local_iter + 1) % acc == 0
