"""Running the command lines in the test process, as a user would type them, and the one-line error contract.

``robustseg <command>`` is :func:`common.__main__.main`; ``python -m monai.bundle run ...`` is MONAI's ``run`` with
its error printed as the hook :func:`common.errors.install_excepthook` prints it. Both return the exit status instead
of leaving the process, so a test can check stderr (``capsys``) and the files afterwards.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from monai.bundle import run as bundle_run

from common.__main__ import main
from common.errors import end_progress_bars, find_user_error, format_user_error

from .world import QUICK, World

REPO = Path(__file__).resolve().parents[2]
EVAL_CONFIG = REPO / "bundles" / "brats_robustness_eval" / "configs" / "evaluate.json"


def run_cli(argv: list[str]) -> int:
    """``robustseg <argv>`` in this process: its exit status (0 when the command returned)."""
    try:
        main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def run_monai_cli(run_id: str, config: Path, **overrides: object) -> int:
    """``python -m monai.bundle run <run_id> --config_file <config> --<key> <value>...`` in this process; a user error
    is printed as the installed hook prints it (one ``error:`` line) and gives status 1, anything else is raised."""
    try:
        bundle_run(run_id, config_file=str(config), meta_file=str(config.parent / "metadata.json"),
                   logging_file=str(config.parent / "logging.conf"), **overrides)  # fmt: skip
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        end_progress_bars()
        print(format_user_error(user_error), file=sys.stderr)
        return 1
    return 0


def evaluate(world: World, out: Path, datalist: Path | None = None, **overrides: object) -> int:
    """The robustness evaluation bundle on the tiny world: FGSM at the default epsilon, no sweep, into ``out``."""
    settings = {
        "model_bundles": [str(world.bundle)], "output_dir": str(out), "model_config_files": QUICK,
        "datalist": str(datalist or world.datalist), "attacks": [{"name": "FGSM"}], "sweep": None, "adaptive": False,
        "transfer_source": None, "attack_precision": "fp32", "batch_size": 2, "score_batch_size": 2,
        "progress": False, **overrides,
    }  # fmt: skip
    return run_monai_cli("evaluating", EVAL_CONFIG, **settings)


def assert_one_error_line(code: int, stderr: str, *words: str) -> str:
    """A non-zero exit, no traceback, and one ``error:`` line, the last on stderr (after a progress bar's last redraw,
    if any); it holds ``words`` (lower case).

    Returns:
        The error line.
    """
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]  # \r: a progress bar
    errors = [line for line in lines if line.startswith("error: ")]
    assert code != 0, "the command must fail"
    assert "Traceback" not in stderr and len(errors) == 1 and lines[-1] == errors[0], f"not one error line:\n{stderr}"
    for word in words:
        assert word.lower() in errors[0].lower(), errors[0]
    return errors[0]


@pytest.fixture(autouse=True)
def logging_restored():
    """The bundles' ``logging.conf`` binds a handler to the test's captured stdout; drop it with the test, or the next
    test's log lines would fail against a closed stream and print tracebacks into its stderr. Import it into a test
    module that runs bundles (an autouse fixture applies to the module that imports it)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
