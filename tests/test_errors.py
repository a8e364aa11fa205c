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
