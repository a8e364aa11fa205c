"""Fixtures for the defence tests: tiny 3D nets, a 16^3 BraTS-like batch and a real MONAI SupervisedTrainer."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import MeanDice, StatsHandler, from_engine
from monai.transforms import Compose
from torch import Tensor, nn

from common.data.label_transforms import LabelsFromLogitsd, RegionMasksd
from common.losses import SoftDiceLoss

SIZE = 16
BRATS = torch.tensor([0, 1, 2, 4])


class TinyNet(nn.Sequential):
    """Two 3D convolutions, 4 contrasts in, 4 BraTS channels out; ``dropout > 0`` adds a dropout layer."""

    def __init__(self, width: int = 6, dropout: float = 0.0, out_channels: int = 4) -> None:
        layers: list[nn.Module] = [nn.Conv3d(4, width, 3, padding=1), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Conv3d(width, out_channels, 1))
        super().__init__(*layers)


@pytest.fixture
def make_net() -> Callable[..., TinyNet]:
    """``make_net(seed=0, **TinyNet kwargs)``: a fresh TinyNet."""

    def make(seed: int = 0, **kwargs: Any) -> TinyNet:
        torch.manual_seed(seed)
        return TinyNet(**kwargs)

    return make


def make_samples(n: int, seed: int = 0) -> list[dict[str, Tensor]]:
    """``n`` samples {"image": (4, 16^3) in [0.1, 0.9] scaled by a per-sample factor, "label": (1, 16^3) BraTS}."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        image = (0.1 + 0.8 * torch.rand(4, SIZE, SIZE, SIZE, generator=generator)) * (1.0 + i)
        label = BRATS[torch.randint(0, 4, (1, SIZE, SIZE, SIZE), generator=generator)]
        samples.append({"image": image, "label": label})
    return samples


@pytest.fixture
def samples() -> Callable[..., list[dict[str, Tensor]]]:
    """``samples(n, seed=0)``: a list of ``n`` training samples (MONAI dictionaries)."""
    return make_samples


@pytest.fixture
def make_trainer() -> Callable[..., SupervisedTrainer]:
    """``make_trainer(net, step, data, loss=SoftDiceLoss(), lr=0.1, max_epochs=1, handlers=(), **trainer kwargs)``."""

    def make(
        net: nn.Module,
        step: Callable,
        data: Sequence[dict[str, Tensor]],
        loss: Callable | None = None,
        lr: float = 0.1,
        max_epochs: int = 1,
        handlers: Sequence[Any] = (),
        **kwargs: Any,
    ) -> SupervisedTrainer:
        return SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=max_epochs,
            train_data_loader=DataLoader(list(data), batch_size=2, shuffle=False, num_workers=0),
            network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=lr),
            loss_function=loss if loss is not None else SoftDiceLoss(),
            iteration_update=step,
            train_handlers=list(handlers),
            **kwargs,
        )

    return make


class EventRecorder:
    """Counts the MONAI iteration events and keeps what a handler would see at each of them."""

    def __init__(self, engine: Engine) -> None:
        self.counts = {event: 0 for event in IterationEvents}
        self.grads: list[dict[str, Tensor]] = []
        self.outputs: list[dict[str, Any]] = []
        self.decollated: list[Any] = []
        for event in (
            IterationEvents.FORWARD_COMPLETED,
            IterationEvents.LOSS_COMPLETED,
            IterationEvents.BACKWARD_COMPLETED,
            IterationEvents.MODEL_COMPLETED,
        ):
            engine.add_event_handler(event, self._count, event)
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._forward)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._backward)
        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self._model)
        self.pred_at_forward: list[Tensor] = []

    def _count(self, engine: Engine, event: IterationEvents) -> None:
        self.counts[event] += 1

    def _forward(self, engine: Engine) -> None:
        self.pred_at_forward.append(engine.state.output["pred"].detach().clone())

    def _backward(self, engine: Engine) -> None:
        net = engine.network
        self.grads.append({k: p.grad.detach().clone() for k, p in net.named_parameters() if p.grad is not None})
        # MONAI decollates the output into a list of per-sample dicts at MODEL_COMPLETED: keep the batch dict here
        self.outputs.append(dict(engine.state.output))

    def _model(self, engine: Engine) -> None:
        self.decollated.append(engine.state.output)


@pytest.fixture
def recorder() -> type[EventRecorder]:
    """The :class:`EventRecorder` class: ``EventRecorder(trainer)`` before ``trainer.run()``."""
    return EventRecorder


@pytest.fixture
def log_records() -> Iterator[Callable[[str], list[logging.LogRecord]]]:
    """``log_records(name)``: a live list of the INFO+ records of logger ``name`` (MONAI loggers do not propagate)."""
    attached: list[tuple[logging.Logger, logging.Handler, int]] = []

    class _Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    def attach(name: str) -> list[logging.LogRecord]:
        logger = logging.getLogger(name)
        handler = _Keep()
        attached.append((logger, handler, logger.level))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        return handler.records

    yield attach
    for logger, handler, level in attached:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def run_with_handlers(make_trainer, recorder, log_records, samples) -> Callable[..., tuple[SupervisedTrainer, Any]]:
    """``run_with_handlers(net, step, **make_trainer kwargs)``: two iterations with what a bundle attaches, checked.

    The trainer gets four samples (two batches), a ``StatsHandler`` logging ``train_loss`` and a train Dice metric on
    post-processed ``pred``/``label``. Checks what every ``iteration_update`` owes MONAI's handlers: each iteration
    event fired once per iteration, the metric and the log computed from the output, finite losses, every parameter
    updated and the network left in train mode (as MONAI's own iteration leaves it).

    Returns:
        The trainer and its :class:`EventRecorder`, for checks of the step's own.
    """

    def run(net: nn.Module, step: Callable, **kwargs: Any) -> tuple[SupervisedTrainer, EventRecorder]:
        initial = copy.deepcopy(net)
        records = log_records("defence_test_stats")
        trainer = make_trainer(
            net,
            step,
            samples(4),
            handlers=[
                StatsHandler(
                    name="defence_test_stats", tag_name="train_loss", output_transform=from_engine(["loss"], True)
                )
            ],
            postprocessing=Compose([LabelsFromLogitsd(keys="pred"), RegionMasksd(keys=["pred", "label"])]),
            key_train_metric={"train_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
            **kwargs,
        )
        events = recorder(trainer)
        trainer.run()

        assert trainer.state.iteration == 2
        assert all(count == 2 for event, count in events.counts.items() if "inner" not in event.value)
        dice = trainer.state.metrics["train_dice"]
        assert 0.0 <= dice <= 1.0 and math.isfinite(dice)
        assert sum("train_loss" in r.getMessage() for r in records) == 2
        assert all(math.isfinite(o["loss"].item()) for o in events.outputs)
        assert all(not torch.equal(p, q) for p, q in zip(net.parameters(), initial.parameters(), strict=True))
        assert net.training
        return trainer, events

    return run
