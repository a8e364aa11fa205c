"""The options of the robustness report: which epsilon, attack, loss and reference model the tables and figures show.

One frozen dataclass, checked once when it is made, shared by ``robustseg stats`` / ``robustseg report`` (its fields
are their flags), :func:`common.report.tables.write_tables`, :func:`common.report.figures.build_figures` and
:func:`common.report.html.write_report`. The defaults are the paper's (Liu et al. 2021): Table 1 at eps = 0.05,
Tables 2-3 with FGSM at eps 0, 0.05 and 0.1, significance at 0.05 after Bonferroni correction.

Example::

    options = ReportOptions(epsilons=(0.0, 0.02, 0.05), baseline="brats_unet3d_baseline")
    write_tables("results.csv", "tables", options)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from common.errors import RobustsegError
from common.utils.validation import check_number, is_number

__all__ = ["ReportOptions"]


@dataclass(frozen=True)
class ReportOptions:
    """What the report tabulates and plots.

    Attributes:
        epsilon: Table 1's attack radius (the paper's 0.05), also preferred for the slice panels.
        epsilons: the epsilon columns of Tables 2 and 3 (0 = the clean rows); any sequence, kept as a tuple.
        attack: the attack of Tables 2-3 and of the Dice-vs-epsilon figures (the paper's FGSM).
        loss: the attack loss to tabulate and plot; ``None``: all in Table 1, elsewhere the only one in the CSV,
            else ``soft_dice``.
        baseline: the undefended reference model, or one per net as a sequence (kept as a tuple); ``None``: each
            net's only undefended model.
        alpha: significance level after Bonferroni correction.

    Raises:
        RobustsegError: if ``epsilon`` is not a finite number > 0, ``epsilons`` is empty or holds anything but finite
            numbers >= 0, ``attack`` is not a non-empty string, ``loss`` is neither ``None`` nor one, ``baseline`` is
            neither ``None``, a name nor a list of names, or ``alpha`` is not in (0, 1).

    Example::

        ReportOptions(epsilon=0.1, attack="PGD", alpha=0.01)
    """

    epsilon: float = 0.05
    epsilons: tuple[float, ...] = (0.0, 0.05, 0.1)
    attack: str = "FGSM"
    loss: str | None = None
    baseline: str | tuple[str, ...] | None = None
    alpha: float = 0.05

    def __post_init__(self) -> None:
        epsilon = check_number("epsilon", self.epsilon, minimum=0, min_inclusive=False, hint="Table 1's attack radius")
        try:
            epsilons = list(self.epsilons)
        except TypeError:  # a single number
            epsilons = None
        if not epsilons or any(not (is_number(e) and e >= 0 and math.isfinite(e)) for e in epsilons):
            shown = self.epsilons if epsilons is None else epsilons
            raise RobustsegError(f"epsilons must be a non-empty list of finite numbers >= 0, got {shown}.")
        if not isinstance(self.attack, str) or not self.attack:
            raise RobustsegError(f"attack must name an attack (e.g. 'FGSM'), got {self.attack!r}.")
        if self.loss is not None and (not isinstance(self.loss, str) or not self.loss):
            raise RobustsegError(f"loss must be None or an attack loss name (e.g. 'soft_dice'), got {self.loss!r}.")
        if not (is_number(self.alpha) and 0 < self.alpha < 1):
            raise RobustsegError(f"alpha must lie in (0, 1), got {self.alpha}.")
        object.__setattr__(self, "epsilon", epsilon)
        object.__setattr__(self, "epsilons", tuple(float(e) for e in epsilons))
        if self.baseline is not None and not isinstance(self.baseline, str):
            names = list(self.baseline) if isinstance(self.baseline, (list, tuple)) else None
            if names is None or not all(isinstance(name, str) and name for name in names):
                raise RobustsegError(
                    f"baseline must be None, a model name or a list of model names, got {self.baseline!r}."
                )
            object.__setattr__(self, "baseline", tuple(names))
        elif self.baseline == "":
            raise RobustsegError("baseline must be None, a model name or a list of model names, got ''.")

    @property
    def baselines(self) -> list[str]:
        """The reference model(s) as a list (empty: choose each net's only undefended model)."""
        return [self.baseline] if isinstance(self.baseline, str) else list(self.baseline or ())

    @classmethod
    def resolve(cls, options: ReportOptions | None = None, **values: object) -> ReportOptions:
        """The options of a call that takes an ``options`` object, option keywords, or both (keywords win).

        Args:
            options: the options; ``None``: the defaults.
            values: fields to set, e.g. ``epsilon=0.1`` (the keywords the report functions accept).

        Raises:
            TypeError: for an unknown keyword or an ``options`` that is not a :class:`ReportOptions`.
            RobustsegError: for an invalid value (see :class:`ReportOptions`).
        """
        if options is None:
            return cls(**values)
        if not isinstance(options, cls):
            raise TypeError(f"options must be a ReportOptions or None, got {type(options).__name__}.")
        return dataclasses.replace(options, **values) if values else options
