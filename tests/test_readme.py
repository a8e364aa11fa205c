"""The README's two set-up commands exist, and CI runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_exactly_two_commands_pinning_cpu_torch():
    commands = _setup_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands), "each set-up command is one copy-pasteable line"
    assert all("torch==2.13.0" in c for c in commands), "the pin keeps pip from pulling a multi-GB CUDA build"


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = _setup_commands()[1].split("&&", 1)[1].strip()  # after activating the venv
    assert test_command in (REPO / ".ci" / "run").read_text()
