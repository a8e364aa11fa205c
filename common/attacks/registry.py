"""Attacks by name, so bundle configs and the robustness evaluation can describe them as plain JSON specs."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from common.attacks.apgd import APGD
from common.attacks.base import Attack
from common.attacks.fgsm import FGSM
from common.attacks.ifgsm import IterativeFGSM
from common.attacks.noise import RandomSign
from common.attacks.pgd import PGD
from common.attacks.tifgsm import TargetedIterativeFGSM
from common.errors import RobustsegError

__all__ = ["ATTACKS", "make_attack"]

ATTACKS: dict[str, type[Attack]] = {
    FGSM.name: FGSM,
    IterativeFGSM.name: IterativeFGSM,
    TargetedIterativeFGSM.name: TargetedIterativeFGSM,
    PGD.name: PGD,
    APGD.name: APGD,
    RandomSign.name: RandomSign,
}
"""Display name (the CSV's ``attack`` column) -> attack class: ``FGSM``, ``i-FGSM``, ``ti-FGSM``, ``PGD``, ``APGD``
and the noise control ``random-sign``."""

# keyword settings every attack accepts through ``Attack.__init__`` (subclasses pass them on as ``**kwargs``)
_COMMON = ("loss", "relative", "norm", "clip", "temperature", "logit_scale", "inferer", "amp", "stop", "task")


def _parameters(cls: type[Attack]) -> list[str]:
    own = [
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return own + [name for name in _COMMON if name not in own]


def _look_up(name: object) -> type[Attack]:
    if isinstance(name, str):
        for known, cls in ATTACKS.items():
            if name.lower() == known.lower():
                return cls
    raise RobustsegError(f"attack name must be one of {list(ATTACKS)}, got {name!r}.")


def make_attack(spec: Mapping[str, Any] | str, **overrides: Any) -> Attack:
    """Build an attack from a plain spec: ``{"name": ..., **constructor settings}``.

    The names are the display names of the attack classes (:data:`ATTACKS`; matched without regard to case). The
    other keys are the class's constructor arguments (e.g. ``epsilon``, ``steps``, ``alpha``, ``target``,
    ``restarts``, ``seed``, ``radius_schedule``) and the settings common to every attack (``loss``, ``relative``,
    ``norm``, ``clip``, ``temperature``, ``logit_scale``, ``inferer``, ``amp``, ``stop``); the constructor checks their
    values (``norm="l2"`` only for the attacks that support it: PGD and APGD).

    Args:
        spec: the spec, or just a name (then ``epsilon`` must come from ``overrides``).
        overrides: settings that replace the spec's (e.g. ``temperature=T`` for the adaptive attack).

    Returns:
        The attack.

    Raises:
        RobustsegError: if the spec is not a mapping with a ``name``, the name is unknown (the valid names are
            listed), a key is not a setting of that attack (its settings are listed), a required setting is missing,
            or a value is rejected by the attack's constructor.

    Example::

        attack = make_attack({"name": "i-FGSM", "epsilon": 0.05, "steps": 10})
        adaptive = make_attack({"name": "FGSM", "epsilon": 0.05}, temperature=100.0)
        l2 = make_attack({"name": "PGD", "norm": "l2", "epsilon": 0.5, "steps": 10})
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise RobustsegError(
            f"attack spec must be a mapping with a 'name' (one of {list(ATTACKS)}) and its settings, got {spec!r}."
        )
    cls = _look_up(spec["name"])
    settings = {**{k: v for k, v in spec.items() if k != "name"}, **overrides}
    accepted = _parameters(cls)
    unknown = [key for key in settings if key not in accepted]
    if unknown:
        raise RobustsegError(f"attack {cls.name}: unknown setting(s) {unknown}; expected some of {accepted}.")
    required = [
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    missing = [name for name in required if name not in settings]
    if missing:
        raise RobustsegError(f"attack {cls.name}: missing setting(s) {missing}; got {sorted(settings)}.")
    if isinstance(settings.get("clip"), list):  # JSON has no tuples
        settings["clip"] = tuple(settings["clip"])
    return cls(**settings)
