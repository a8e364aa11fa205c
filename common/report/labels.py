"""How the report names things: nets, defences, regions, epsilons, models and output files.

One place for the words of the tables, figures and the HTML page, so that a defence reads "Adversarial training
(eps=0.05)" and sorts after distillation everywhere. The defence and net names come from
:class:`~common.utils.enums.Defense` and :class:`~common.utils.enums.Net` (code spells "defense", as the CSV column
does; the labels say "defence").

Example::

    defence_label("distillation", "T=5000")        # 'Distillation (T=5000)'
    file_stem("table2_3d_transfer from x/y")        # 'table2_3d_transfer_from_x_y'
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from common.utils.enums import Defense, Net

__all__ = [
    "DEFENCE_NAMES",
    "DICE_COLUMNS",
    "NET_NAMES",
    "REGIONS",
    "REGION_NAMES",
    "defence_label",
    "defence_sort_key",
    "file_stem",
    "format_eps",
    "model_label",
    "steps_text",
]

NET_NAMES: dict[str, str] = {net.value: net.title for net in Net}
"""net -> the name a table or legend shows ("3d" -> "3D-UNet")."""
DEFENCE_NAMES: dict[str, str] = {defense.value: defense.title for defense in Defense}
"""defense -> the name a table or legend shows ("none" -> "No defence")."""
REGION_NAMES: dict[str, str] = {"WT": "whole tumour", "TC": "tumour core", "ET": "enhancing tumour"}
"""The BraTS evaluation regions, in the order the figures draw them."""
REGIONS: tuple[str, ...] = tuple(REGION_NAMES)
DICE_COLUMNS: dict[str, str] = {"WT": "dice_wt", "TC": "dice_tc", "ET": "dice_et"}
"""region -> its Dice column in the results CSV."""


def format_eps(eps: float) -> str:
    """An epsilon as captions, titles and file names show it (``0.05``, ``0``, ``1e-05``)."""
    return f"{eps:g}"


def steps_text(steps: Iterable[int]) -> str:
    """The step counts of some attack rows: ``"1 step"``, ``"10 steps"``, ``"1/10 steps"``."""
    values = sorted(set(steps))
    return "/".join(str(s) for s in values) + (" step" if values == [1] else " steps")


def file_stem(name: str) -> str:
    """``name`` as a portable file stem: every run of characters other than ``A-Za-z0-9._-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def defence_label(defense: str, param: str) -> str:
    """A model's defence as a row or legend label: ``"No defence"``, ``"Distillation (T=5000)"``."""
    name = DEFENCE_NAMES[defense]
    return f"{name} ({param})" if param and defense != Defense.NONE else name


def _param_number(param: str) -> float:
    match = re.search(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", param)
    return float(match.group()) if match else math.inf


def defence_sort_key(defense: str, param: str, model: str) -> tuple:
    """The order of models in tables and legends: by :class:`Defense` family, then by the parameter's number."""
    return (tuple(Defense).index(Defense(defense)), _param_number(param), param, model)


def model_label(model: str, info: dict[str, tuple[str, str, str]], unique: bool = True) -> str:
    """A model's legend label: its defence (:func:`defence_label`), with the model name when labels repeat.

    Args:
        model: the model bundle name.
        info: model -> (net, defense, defense_param), from :func:`common.report.selection.model_identities`.
        unique: whether the defence labels of the models shown together are all different; if not, the model name
            is added in brackets.

    Returns:
        The label; the model name itself for a model not in ``info``.
    """
    if model not in info:
        return model
    _, defense, param = info[model]
    label = defence_label(defense, param)
    return label if unique else f"{label} [{model}]"
