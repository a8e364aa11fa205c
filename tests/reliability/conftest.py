"""The reliability suite's tally: every test that injects a fault or tries a bad input records it here, and the end
of the run prints one screen of what was tried and how many results rows were lost.

Usage in a test::

    def test_kill_during_append(reliability, tmp_path):
        ...                                    # kill the run at a random point
        reliability.fault("kill -9 during a CSV append")
        reliability.lost(expected_rows, found_rows)   # rows lost: expected but missing (0 is the promise)

    def test_bad_epsilon(reliability, value):
        reliability.bad_input("epsilon list")
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest


@dataclass
class Tally:
    """Counts per guarantee of the faults injected and bad inputs tried, and the rows lost over the run."""

    faults: Counter = field(default_factory=Counter)
    bad_inputs: Counter = field(default_factory=Counter)
    rows_lost: int = 0
    rows_checked: int = 0

    def fault(self, what: str, count: int = 1) -> None:
        """Record ``count`` injected faults of kind ``what`` (a kill, a full disk, a concurrent writer...)."""
        self.faults[what] += count

    def bad_input(self, what: str, count: int = 1) -> None:
        """Record ``count`` hostile or malformed inputs tried against validator ``what``."""
        self.bad_inputs[what] += count

    def lost(self, expected: int, found: int) -> None:
        """Record a results check: ``expected`` rows should be there, ``found`` distinct, complete ones were."""
        self.rows_checked += expected
        self.rows_lost += max(expected - found, 0)


TALLY = Tally()


@pytest.fixture(scope="session")
def tiny_eval(tmp_path_factory):
    """One tiny model bundle, three subjects, and the rows of their uninterrupted evaluation, shared by the kill and
    concurrency tests (read-only: each test writes into its own folder)."""
    from ._runs import evaluate, read_rows, tiny_evaluation

    folder = tmp_path_factory.mktemp("reliability_eval")
    settings = tiny_evaluation(folder)
    evaluate(settings, folder / "reference")
    return settings, read_rows(folder / "reference" / "results.csv")


@pytest.fixture
def reliability() -> Tally:
    """The session's :class:`Tally`."""
    return TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest's hook signature
    if not (TALLY.faults or TALLY.bad_inputs or TALLY.rows_checked):
        return
    write = terminalreporter.write_line
    terminalreporter.section("reliability summary")
    for title, counts in (("faults injected", TALLY.faults), ("bad inputs tried", TALLY.bad_inputs)):
        write(f"{title}: {sum(counts.values())}")
        for what, n in sorted(counts.items()):
            write(f"  {n:6d}  {what}")
    write(f"results rows checked after faults: {TALLY.rows_checked}, rows lost: {TALLY.rows_lost}")
