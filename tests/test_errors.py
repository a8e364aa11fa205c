"""The one-line error contract: the hook prints only the user error found in a wrapped chain."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.errors import RobustsegError, find_user_error, format_user_error


def test_find_in_chain():
    try:
        try:
            raise RobustsegError("epsilon must be >= 0, got -1.")
        except RobustsegError as inner:
            raise RuntimeError("Failed to instantiate component") from inner
    except RuntimeError as outer:
        assert str(find_user_error(outer)) == "epsilon must be >= 0, got -1."
    assert find_user_error(ValueError("x")) is None


def test_format_folds_lines():
    assert format_user_error(RobustsegError("a\nb")) == "error: a b"


@pytest.mark.parametrize("traceback_env, expect_traceback", [("", False), ("1", True)])
def test_hook_prints_one_line(traceback_env, expect_traceback):
    # `import common` installs the hook and, thanks to lazy subpackages, imports neither torch nor MONAI
    code = (
        "import common\n"
        "from common.errors import RobustsegError\n"
        "try:\n"
        "    raise RobustsegError('datalist.json: no such file.')\n"
        "except RobustsegError as e:\n"
        "    raise RuntimeError('wrapped') from e\n"
    )
    env = {"ROBUSTSEG_TRACEBACK": traceback_env} if traceback_env else {}
    import os

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode != 0
    if expect_traceback:
        assert "Traceback" in proc.stderr
    else:
        assert proc.stderr.strip() == "error: datalist.json: no such file."


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (NotADirectoryError(20, "Not a directory", "/tmp/f/sub"), "/tmp/f/sub: not a directory; expected"),
        (PermissionError(13, "Permission denied", "/ro/out.csv"), "/ro/out.csv: permission denied; expected"),
        (OSError(30, "Read-only file system", "/ro/x", None, "/ro/y"), "/ro/x -> /ro/y: read-only file system"),
        (OSError(28, "No space left on device"), "no space left on device; expected free space"),
        (OSError(28, "No space left on device", "/full/x.pt"), "/full/x.pt: no space left on device"),
        (OSError(5, "Input/output error", "/dev/sdz"), None),  # not the user's: a traceback
        (FileNotFoundError(2, "No such file or directory"), None),  # no path to name: a traceback
        (KeyError("x"), None),
    ],
)
def test_file_system_errors_are_the_users(error, expected):
    try:
        try:
            raise error
        except BaseException as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        found = find_user_error(outer)
    if expected is None:
        assert found is None
    else:
        assert isinstance(found, RobustsegError) and str(found).startswith(expected), found


def test_a_robustseg_error_in_the_chain_wins_over_an_os_error():
    try:
        try:
            raise NotADirectoryError(20, "Not a directory", "/a")
        except OSError as inner:
            raise RobustsegError("out: bad folder") from inner
    except RobustsegError as outer:
        assert str(find_user_error(outer)) == "out: bad folder"


def test_cli_names_an_output_path_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub"
    done = subprocess.run([sys.executable, "-m", "common", "data", "synth", "--out", str(out), "--subjects", "2",
                           "--shape", "32"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    expected = f"error: {out}: not a directory; expected a writable/readable path of the right kind."
    assert done.stderr.strip() == expected
    assert (tmp_path / "afile").read_text() == "x"


def test_open_progress_bars_are_closed_before_the_error_line():
    """A run that fails mid-epoch leaves its tqdm bar open, the cursor after its last redraw: the error line would
    continue the bar's line."""
    import io

    from tqdm import tqdm

    from common.errors import end_progress_bars

    stream = io.StringIO()
    bar = tqdm(total=10, file=stream, leave=False)
    bar.update(3)
    end_progress_bars()
    assert bar not in tqdm._instances and stream.getvalue().endswith("\r")
