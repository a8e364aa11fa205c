"""A progress bar for MONAI engines, usable from bundle configs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.engine import Engine
from ignite.handlers import ProgressBar

__all__ = ["ProgressBarHandler"]


class ProgressBarHandler:
    """Attach ignite's tqdm :class:`~ignite.handlers.ProgressBar` to a MONAI engine from a bundle config.

    MONAI engines call ``handler.attach(engine)`` for each item of ``train_handlers``/``val_handlers``; ignite's bar
    takes its options in ``attach``, so this wrapper carries them.

    Args:
        output_transform: maps ``engine.state.output`` to a number or dict shown beside the bar (e.g. the loss with
            ``monai.handlers.from_engine(["loss"], first=True)``).
        desc: a label printed before the bar.
        persist: keep the finished bar on screen.
    """

    def __init__(self, output_transform: Callable | None = None, desc: str = "", persist: bool = False) -> None:
        self.output_transform = output_transform
        self.desc = desc
        self.persist = persist

    def attach(self, engine: Engine) -> None:
        bar = ProgressBar(persist=self.persist, desc=self.desc)
        kwargs: dict[str, Any] = {}
        if self.output_transform is not None:
            kwargs["output_transform"] = self.output_transform
        bar.attach(engine, **kwargs)
