"""ReportOptions: the paper's defaults, one check per field, keywords over an options object, the CLI's flags."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pytest

from common.__main__ import CLI
from common.errors import RobustsegError
from common.report.options import ReportOptions


def test_defaults_are_the_papers():
    options = ReportOptions()
    assert (options.epsilon, options.epsilons, options.attack) == (0.05, (0.0, 0.05, 0.1), "FGSM")
    assert (options.loss, options.baseline, options.alpha, options.baselines) == (None, None, 0.05, [])


def test_sequences_are_kept_as_tuples_of_floats():
    options = ReportOptions(epsilon=1, epsilons=[0, 0.05], baseline=["a", "b"])
    assert options.epsilon == 1.0 and isinstance(options.epsilon, float)
    assert options.epsilons == (0.0, 0.05) and all(isinstance(e, float) for e in options.epsilons)
    assert options.baseline == ("a", "b") and options.baselines == ["a", "b"]
    assert ReportOptions(baseline="a").baselines == ["a"]
    hash(options)  # frozen and hashable


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epsilon": 0}, r"epsilon must be a finite number > 0 \(Table 1's attack radius\), got 0\."),
        ({"epsilon": float("inf")}, "epsilon must be a finite number > 0"),
        ({"epsilons": []}, r"epsilons must be a non-empty list of finite numbers >= 0, got \[\]\."),
        ({"epsilons": [0, -1]}, r"epsilons must be a non-empty list of finite numbers >= 0, got \[0, -1\]\."),
        ({"epsilons": 0.1}, r"epsilons must be a non-empty list of finite numbers >= 0, got 0\.1\."),
        ({"attack": ""}, r"attack must name an attack \(e\.g\. 'FGSM'\), got ''\."),
        ({"attack": 5}, r"attack must name an attack \(e\.g\. 'FGSM'\), got 5\."),
        ({"loss": 0.1}, r"loss must be None or an attack loss name \(e\.g\. 'soft_dice'\), got 0\.1\."),
        ({"baseline": 5}, r"baseline must be None, a model name or a list of model names, got 5\."),
        ({"baseline": ["a", 1]}, r"baseline must be None, a model name or a list of model names, got \['a', 1\]\."),
        ({"alpha": 1.5}, r"alpha must lie in \(0, 1\), got 1\.5\."),
    ],
)
def test_invalid_values_raise(values, message):
    with pytest.raises(RobustsegError, match=message):
        ReportOptions(**values)


def test_resolve_puts_keywords_over_the_options():
    base = ReportOptions(epsilon=0.1, attack="PGD")
    assert ReportOptions.resolve() == ReportOptions()
    assert ReportOptions.resolve(base) is base
    assert ReportOptions.resolve(base, attack="FGSM") == ReportOptions(epsilon=0.1)
    assert ReportOptions.resolve(None, alpha=0.01) == ReportOptions(alpha=0.01)


@pytest.mark.parametrize("call", [lambda: ReportOptions.resolve(0.05), lambda: ReportOptions.resolve(colour="red")])
def test_resolve_rejects_what_is_not_an_option(call):
    with pytest.raises(TypeError):
        call()


@pytest.mark.parametrize(
    "command, own", [("stats", ["csv", "out"]), ("report", ["csv", "out", "settings", "examples"])]
)
def test_cli_commands_take_the_options_as_flags(command, own):
    parameters = inspect.signature(getattr(CLI(), command)).parameters
    fields = {f.name: f.default for f in dataclasses.fields(ReportOptions)}
    assert list(parameters) == own + list(fields)
    assert {name: parameters[name].default for name in fields} == fields


def test_the_cli_reads_the_options_without_numpy():
    code = "import sys, common.__main__; print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
