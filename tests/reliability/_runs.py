"""Shared pieces of the kill, resume-settings and concurrency tests: a kill switch, runs in a forked or a fresh
process, tiny data and model bundles, and the results check.

The kill switch lives here, in the test harness, not in ``common/``: a child process arms it (:func:`arm`, or
:func:`arm_from_environment` with ``RELIABILITY_KILL`` set, for a command started by a test), and it SIGKILLs that
process at an exact point of its work:

=============================  =========================================================================================
``append:N:F``                 in the N-th append of rows to a results file (``_RowWriter.write``), after writing the
                               first fraction F of its bytes (flushed: what the disk holds when a kill hits a write)
``checkpoint:N:F``             in the N-th interval checkpoint save (``*checkpoint_epoch=*.pt``), F of its bytes
                               written to the file ignite writes (a temporary file while saves are atomic)
``model:N:F``                  the same for ``model.pt``
``replace=NAME:N``             just before the N-th ``os.replace`` onto a file whose name contains NAME (an atomic
                               write, complete in its temporary file, not yet renamed)
``unlink=NAME:N``              just after the N-th removal of a file whose name contains NAME
=============================  =========================================================================================

A suffix ``@R`` arms it only in the process of rank R under ``torchrun`` (``append:1:0.5@1``). This module imports
only the standard library at the top, so a command can import it from its folder (``sys.path``) without the tests.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

KILL_ENV = "RELIABILITY_KILL"
"""The environment variable a command started by a test reads its kill point from (:func:`arm_from_environment`)."""
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

_SPEC = re.compile(r"^(?P<point>[a-z]+)(=(?P<name>[^:@]+))?:(?P<nth>\d+)(:(?P<fraction>[0-9.]+))?(@(?P<rank>\d+))?$")


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _torn(text: str, fraction: float) -> str:
    """The first ``fraction`` of ``text``, at least one character and never ending at a line end (a torn line)."""
    cut = min(max(1, int(len(text) * fraction)), len(text) - 1)
    while cut > 1 and text[cut - 1] == "\n":
        cut -= 1
    return text[:cut]


def arm(spec: str) -> None:
    """Arm the kill switch in this process (see the module for ``spec``)."""
    match = _SPEC.match(spec)
    if match is None:
        raise ValueError(f"{KILL_ENV}: {spec!r} is not a kill point like 'append:2:0.5' or 'replace=results.csv:1'")
    if match["rank"] is not None and os.environ.get("RANK", "0") != match["rank"]:
        return
    point, name, nth = match["point"], match["name"] or "", int(match["nth"])
    fraction = float(match["fraction"] or 0.5)
    calls = [0]

    def hit(filename: object = "") -> bool:
        if name not in os.fspath(filename):
            return False
        calls[0] += 1
        return calls[0] == nth

    if point == "append":
        from common.engines import results_io
        from common.report.schema import format_record

        write = results_io._RowWriter.write

        def torn_write(self, records):
            if not records or not hit():
                return write(self, records)
            buffer = io.StringIO()
            rows = csv.writer(buffer)
            with open(self.path, "ab", buffering=0) as handle:  # the writer's own unbuffered append, cut short
                if os.fstat(handle.fileno()).st_size == 0:
                    rows.writerow(results_io.COLUMN_NAMES)
                for record in records:
                    rows.writerow(format_record(record))
                handle.write(_torn(buffer.getvalue(), fraction).encode("utf-8"))
                os.fsync(handle.fileno())
                _die()

        results_io._RowWriter.write = torn_write
    elif point in ("checkpoint", "model"):
        from common.engines import checkpoint as checkpoints
        from common.utils.files import atomic_write

        pattern = "checkpoint_epoch=" if point == "checkpoint" else "model.pt"
        write = checkpoints.write_atomic  # the checkpoint saver serialises in memory, then writes through this

        def torn_write(path, content, *args, **kwargs):
            if pattern not in Path(os.fspath(path)).name or not hit():
                return write(path, content, *args, **kwargs)
            data = bytes(content)
            with atomic_write(path) as tmp, open(tmp, "wb") as handle:  # the kill lands inside the temporary file
                handle.write(data[: max(1, int(len(data) * fraction))])
                handle.flush()
                os.fsync(handle.fileno())
                _die()

        checkpoints.write_atomic = torn_write
    elif point == "replace":
        replace = os.replace

        def dying_replace(src, dst, *args, **kwargs):
            if hit(Path(os.fspath(dst)).name):
                _die()
            return replace(src, dst, *args, **kwargs)

        os.replace = dying_replace
    elif point == "unlink":
        unlink = Path.unlink

        def dying_unlink(self, missing_ok=False):
            unlink(self, missing_ok=missing_ok)
            if hit(self.name):
                _die()

        Path.unlink = dying_unlink
    else:
        raise ValueError(f"{KILL_ENV}: unknown kill point {point!r} in {spec!r}")


def arm_from_environment() -> None:
    """Arm the kill switch from ``RELIABILITY_KILL`` if it is set (a command started by a test calls this first)."""
    spec = os.environ.get(KILL_ENV)
    if spec:
        arm(spec)


# ---- running a piece of work in another process -------------------------------------------------------------------


def run_forked(work: Callable[[], Any], kill: str | None = None, wait: bool = True) -> int:
    """Run ``work()`` in a forked copy of this process, with the kill switch armed there (``kill``).

    A fork shares what the test process has imported and built (seconds of imports saved per run); the child never
    returns into pytest: it ends with ``os._exit``.

    Args:
        work: what the child runs.
        kill: a kill point (see the module), or ``None``.
        wait: wait for the child; ``False``: return at once (then ``os.waitpid`` it).

    Returns:
        With ``wait``, the child's wait status as :func:`exit_of` reads it: ``-9`` if it was SIGKILLed, else its
        exit code (0: ``work`` returned; 1: it raised); without ``wait``, the child's pid.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            if kill:
                arm(kill)
            work()
            code = 0
        except BaseException:  # reported, then the child ends
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    if not wait:
        return pid
    return exit_of(os.waitpid(pid, 0)[1])


def exit_of(status: int) -> int:
    """``-signal`` for a process killed by a signal, else its exit code."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def python_command(module: str, args: Iterable[str]) -> list[str]:
    """``python -c ...`` that arms the kill switch from the environment, then runs ``python -m module args``."""
    code = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "import _runs\n"
        "_runs.arm_from_environment()\n"
        f"sys.argv = [{module!r}, *sys.argv[1:]]\n"
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
    )
    return [sys.executable, "-c", code, *args]


def bundle_args(overrides: Mapping[str, Any]) -> list[str]:
    """``--key value`` arguments of a ``monai.bundle run`` for config overrides (values as Python literals)."""
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return args


# ---- tiny data, model bundles and runs ---------------------------------------------------------------------------

EVAL_PLAN: dict[str, Any] = {
    "sweep_epsilons": [0.05, 0.1],
    "attacks": [{"name": "i-FGSM", "steps": 2}],
    "batch_size": 1,
    "score_batch_size": 1,
    "device": "cpu",
    "progress": False,
}
"""The kill tests' evaluation: an FGSM sweep at 2 epsilons and a 2-step i-FGSM, one subject per batch (so that a
resumed run scores each subject as the uninterrupted one did, to the bit)."""

TRAIN_OVERRIDES: dict[str, Any] = {
    "spatial_size": [32, 32, 32],
    "base_filters": 2,
    "epochs": 2,
    "val_interval": 1,
    "val_fraction": 0.25,
    "n4": False,
    "amp": False,
    "precision": "fp32",
}
"""A training of seconds: 3 training and 1 validation subject of 24^3 on a 32^3 grid, a base-2 UNet3D, 2 epochs."""


def tiny_data(folder: Path, training: int = 4, testing: int = 1) -> str:
    """Tiny 24^3 subjects (tests/engines' spheres) in a datalist: ``training`` of them, then ``testing`` others."""
    import numpy as np

    from ..engines.conftest import _write_subject

    rng = np.random.default_rng(0)
    entries = [_write_subject(folder, f"tiny_{i:03d}", rng) for i in range(training + testing)]
    return str(write_json(folder / "datalist.json", {"training": entries[:training], "testing": entries[training:]}))


def tiny_evaluation(folder: Path, models: int = 1, subjects: int = 3) -> dict[str, Any]:
    """Random-weight tiny model bundles (a baseline; with ``models=2`` also a distilled one, T = 5, for the adaptive
    and transfer threats) and tiny subjects under ``folder``: the keyword arguments of their evaluation."""
    from ..engines.conftest import OVERRIDES, QUICK, make_bundle

    bundles = [make_bundle(folder, "tiny_baseline", seed=0)]
    if models > 1:
        bundles.append(make_bundle(folder, "tiny_distill_t5", family="distill", temperature=5.0, seed=1))
    datalist = tiny_data(folder / "data", training=1, testing=subjects)
    return {"model_bundles": [str(b) for b in bundles], "datalist": datalist, "model_config_files": QUICK,
            "model_overrides": OVERRIDES, **EVAL_PLAN}  # fmt: skip


def evaluate(settings: Mapping[str, Any], output_dir: Path, **changes: Any) -> Path:
    """Run the evaluation of :func:`tiny_evaluation`'s ``settings`` (with ``changes``) into ``output_dir``."""
    from common.engines import RobustnessEvaluation

    options = {**settings, **changes}
    return RobustnessEvaluation(options.pop("model_bundles"), output_dir, **options).run()


def copy_training_bundle(folder: Path, name: str = "brats_unet3d_baseline") -> Path:
    """A copy of a committed model bundle's configs under ``folder`` (no models)."""
    import shutil

    target = folder / name
    shutil.copytree(REPO / "bundles" / name, target, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache"))
    return target


def train(root: Path, overrides: Mapping[str, Any]) -> None:
    """Run the bundle's ``training`` in this process, as ``python -m monai.bundle run training`` would."""
    from monai.bundle import run

    configs = root / "configs"
    run("training", config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"), bundle_root=str(root), **overrides)  # fmt: skip


def train_command(root: Path, overrides: Mapping[str, Any]) -> list[str]:
    """The command line of :func:`train`, with the kill switch armed from the environment."""
    args = ["run", "training", "--config_file", str(root / "configs" / "train.json"), "--bundle_root", str(root)]
    return python_command("monai.bundle", args + bundle_args(overrides))


EVAL_BUNDLE = REPO / "bundles" / "brats_robustness_eval"


def evaluation_args(settings: Mapping[str, Any], output_dir: Path) -> list[str]:
    """``run evaluating ...``: the arguments of ``python -m monai.bundle`` that evaluate as :func:`evaluate` does."""
    overrides = {
        "config_file": [str(EVAL_BUNDLE / "configs" / "evaluate.json")],
        "output_dir": str(output_dir),
        "attack_precision": "fp32",  # as RobustnessEvaluation's default (the bundle's "auto" may measure bf16 faster)
        **settings,
    }  # as Python literals (bundle_args): fire reads JSON's false as the string "false", which is true
    return ["run", "evaluating", *bundle_args(overrides)]


# ---- results ---------------------------------------------------------------------------------------------------------


def check_results(path: Path, reference: list[dict[str, str]], reliability: Any) -> None:
    """Assert that ``path`` holds exactly the rows of ``reference`` (an uninterrupted run's), nothing torn or twice.

    Every line must be complete (as many cells as the header, the file ending with a line end), every row key
    (:data:`common.engines.KEY_COLUMNS`) once, the keys those of the reference, and every column but the wall time
    (``seconds``) equal to the reference's. The rows found are recorded in the reliability tally.
    """
    from common.engines.results_io import _row_key
    from common.report.schema import COLUMN_NAMES

    text = path.read_text(encoding="utf-8")
    lines = list(csv.reader(io.StringIO(text)))
    header, body = lines[0], lines[1:]
    rows = [dict(zip(header, cells)) for cells in body if len(cells) == len(header)]
    expected = {_row_key(row): row for row in reference}
    found = {_row_key(row): row for row in rows}
    same = sum(1 for key, row in found.items() if key in expected and _metrics(row) == _metrics(expected[key]))
    reliability.lost(len(expected), same)
    assert tuple(header) == COLUMN_NAMES
    assert text.endswith("\n"), "the file ends in a torn line"
    torn = [cells for cells in body if len(cells) != len(header)]
    assert not torn, f"torn rows: {torn[:2]}"
    keys = [_row_key(row) for row in rows]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    assert not duplicated, f"{len(duplicated)} rows written twice, e.g. {duplicated[0]}"
    missing = expected.keys() - found.keys()
    extra = found.keys() - expected.keys()
    assert not missing and not extra, f"missing rows {sorted(missing)[:2]}, extra rows {sorted(extra)[:2]}"
    differ = [key for key in expected if _metrics(found[key]) != _metrics(expected[key])]
    assert not differ, f"{len(differ)} rows differ from the uninterrupted run's, e.g. {differ[0]}"


def check_partial(folder: Path, reference: list[dict[str, str]]) -> None:
    """Assert what a killed evaluation left in ``folder``: in ``results.csv`` and each part file, every complete row
    is one of ``reference`` (every column but ``seconds``) and none is there twice; a torn last line may be."""
    from common.engines.results_io import _row_key

    expected = {_row_key(row): _metrics(row) for row in reference}
    for path in [folder / "results.csv", *sorted(folder.glob("results.part*.csv"))]:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        lines = list(csv.reader(io.StringIO(text[: text.rfind("\n") + 1])))
        rows = [dict(zip(lines[0], cells)) for cells in lines[1:]] if lines else []
        keys = [_row_key(row) for row in rows]
        assert len(set(keys)) == len(keys), f"{path.name}: a row written twice"
        wrong = [key for key, row in zip(keys, rows) if expected.get(key) != _metrics(row)]
        assert not wrong, f"{path.name}: rows an uninterrupted run does not write, e.g. {wrong[0]}"


def _metrics(row: Mapping[str, str]) -> dict[str, str]:
    return {column: value for column, value in row.items() if column != "seconds"}


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a complete results file, as strings."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def leftovers(folder: Path) -> list[str]:
    """Temporary files an atomic write left in ``folder`` (and below): ``.<name>.*.tmp``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp*"))


def load_every_checkpoint(folder: Path) -> list[str]:
    """Load every ``*.pt`` in ``folder`` with ``weights_only=True``; return their names (any failure raises)."""
    import torch

    names = []
    for path in sorted(folder.glob("*.pt")):
        torch.load(path, map_location="cpu", weights_only=True)
        names.append(path.name)
    return names


def write_json(path: Path, content: Any) -> Path:
    path.write_text(json.dumps(content))
    return path
