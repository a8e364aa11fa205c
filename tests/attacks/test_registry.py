"""Attack registry (common/attacks/registry.py): plain JSON specs -> attack objects, one-line errors."""

from __future__ import annotations

import pytest

from common.attacks import APGD, ATTACKS, FGSM, PGD, IterativeFGSM, TargetedIterativeFGSM, make_attack
from common.errors import RobustsegError


@pytest.mark.parametrize(
    "spec, cls, settings",
    [
        ({"name": "FGSM", "epsilon": 0.05}, FGSM, {"epsilon": 0.05}),
        ({"name": "i-FGSM", "epsilon": 0.05, "steps": 10}, IterativeFGSM, {"steps": 10, "alpha": 0.005}),
        ({"name": "ti-FGSM", "epsilon": 0.05, "steps": 4, "target": 2}, TargetedIterativeFGSM, {"target": 2}),
        ({"name": "PGD", "epsilon": 0.1, "steps": 5, "restarts": 2, "seed": 3}, PGD, {"restarts": 2, "seed": 3}),
        ({"name": "fgsm", "epsilon": 0.01, "loss": "ce"}, FGSM, {"loss": "ce"}),
        ({"name": "APGD", "epsilon": 0.05, "steps": 20, "loss": "js"}, APGD, {"steps": 20, "alpha": 0.1, "loss": "js"}),
        ({"name": "apgd", "epsilon": 0.05, "restarts": 2, "radius_schedule": 2}, APGD, {"radius_schedule": 2.0}),
        ({"name": "FGSM", "epsilon": 0.05, "clip": [0, 1]}, FGSM, {"clip": (0.0, 1.0)}),
        ({"name": "i-FGSM", "epsilon": 0.05, "stop": "dice_zero"}, IterativeFGSM, {"stop": "dice_zero"}),
        ({"name": "PGD", "norm": "l2", "epsilon": 0.5, "steps": 5}, PGD, {"norm": "l2", "alpha": 0.25}),
        ({"name": "APGD", "norm": "l2", "epsilon": 2.0, "steps": 20}, APGD, {"norm": "l2", "alpha": 4.0}),
    ],
)
def test_spec_builds_the_named_attack(spec, cls, settings):
    attack = make_attack(spec)
    assert type(attack) is cls
    for key, value in settings.items():
        assert attack.settings[key] == (pytest.approx(value) if isinstance(value, float) else value)
    direct = cls(**{k: tuple(v) if k == "clip" else v for k, v in spec.items() if k != "name"})
    assert repr(attack) == repr(direct)


def test_names_are_the_display_names():
    assert list(ATTACKS) == ["FGSM", "i-FGSM", "ti-FGSM", "PGD", "APGD", "random-sign"]
    assert all(cls.name == name for name, cls in ATTACKS.items())


def test_overrides_replace_spec_settings():
    attack = make_attack({"name": "i-FGSM", "epsilon": 0.05, "temperature": 2.0}, temperature=100.0, steps=3)
    assert attack.temperature == 100.0 and attack.steps == 3


def test_a_name_alone_needs_an_epsilon():
    assert make_attack("i-FGSM", epsilon=0.02).epsilon == 0.02


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"name": "DeepFool", "epsilon": 0.05},
            r"attack name must be one of \['FGSM', 'i-FGSM', 'ti-FGSM', 'PGD', 'APGD', 'random-sign'\]",
        ),
        ({"epsilon": 0.05}, r"attack spec must be a mapping with a 'name'"),
        (["FGSM"], r"attack spec must be a mapping with a 'name'"),
        ({"name": "FGSM", "epsilon": 0.05, "steps": 3}, r"attack FGSM: unknown setting\(s\) \['steps'\]; expected"),
        ({"name": "i-FGSM"}, r"attack i-FGSM: missing setting\(s\) \['epsilon'\]"),
        ({"name": "FGSM", "epsilon": -0.1}, r"epsilon must be >= 0, got -0.1"),
        ({"name": "FGSM", "epsilon": 1.5}, r"epsilon must be <= 1 with relative=True"),
        ({"name": "i-FGSM", "epsilon": 0.05, "steps": 0}, r"steps must be an integer >= 1"),
        ({"name": "i-FGSM", "epsilon": 0.05, "norm": "l2"}, r"norm must be one of \['linf'\] for i-FGSM"),
        ({"name": "PGD", "epsilon": 0.05, "norm": "L2"}, r"norm must be one of \['linf', 'l2'\] \(the threat model\)"),
    ],
)
def test_bad_specs_raise_one_line(spec, message):
    with pytest.raises(RobustsegError, match=message) as info:
        make_attack(spec)
    assert "\n" not in str(info.value)
