"""Results files (common/engines/results_io.py): subjects sharded across ranks, part files merged into one CSV."""

from __future__ import annotations

import csv

import pytest

from common.engines import merge_results, shard_subjects
from common.errors import RobustsegError
from common.report.schema import COLUMN_NAMES

from .conftest import SUBJECTS


@pytest.mark.parametrize("items, world_size", [(7, 1), (7, 2), (7, 3), (2, 4), (0, 2)])
def test_shards_cover_every_subject_once(items, world_size):
    subjects = [f"s{i}" for i in range(items)]
    shards = [shard_subjects(subjects, rank, world_size) for rank in range(world_size)]
    assert sorted(s for shard in shards for s in shard) == sorted(subjects)
    assert all(shard == sorted(shard, key=subjects.index) for shard in shards)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_rank_out_of_range_raises():
    with pytest.raises(RobustsegError, match=r"rank must be in \[0, 2\), got 2"):
        shard_subjects(["a"], 2, 2)


def _write(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMN_NAMES)
        writer.writerows([[r[c] for c in COLUMN_NAMES] for r in rows])


def test_merge_joins_parts_in_subject_order_without_duplicates(finished, tmp_path):
    with open(finished[0] / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # the evaluation adds its worst-case rows after the merge; the parts hold the others
    rows = [r for r in rows if r["threat"] != "worst-case"]
    by_subject = {s: [r for r in rows if r["subject"] == s] for s in SUBJECTS}
    _write(tmp_path / "results.part1.csv", by_subject[SUBJECTS[1]] + by_subject[SUBJECTS[0]][:3])  # 3 rows twice
    _write(tmp_path / "results.part0.csv", by_subject[SUBJECTS[0]] + by_subject[SUBJECTS[2]])
    merged = merge_results(tmp_path, SUBJECTS)
    lines = (finished[0] / "results.csv").read_text().splitlines(keepends=True)
    assert merged.read_text() == "".join(line for line in lines if ",worst-case," not in line)
    assert not list(tmp_path.glob("results.part*"))




@pytest.mark.parametrize("dropped", [("severity",), ("sigma", "radius", "n_samples", "alpha", "abstain_fraction"),
                                     ("winner", "target_attainment", "dice_trace", "severity")])  # fmt: skip
def test_an_earlier_releases_file_is_upgraded_in_place_before_appending(finished, tmp_path, dropped):
    from common.engines.results_io import _read_rows, _RowWriter

    with open(finished[0] / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    old = [c for c in COLUMN_NAMES if c not in dropped]
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(old)
        writer.writerows([[r[c] for c in old] for r in rows])
    expected = [{**r, **dict.fromkeys(dropped, "")} for r in rows]
    assert _read_rows(path) == expected
    _RowWriter(path).close()
    with open(path, newline="") as handle:
        assert tuple(next(csv.reader(handle))) == COLUMN_NAMES
    assert _read_rows(path) == expected


@pytest.mark.parametrize("header", [
    [*COLUMN_NAMES, "extra"],  # a column this version does not know
    [c for c in COLUMN_NAMES if c != "dice_wt"],  # a first-release column missing
    ["severity", *[c for c in COLUMN_NAMES if c != "severity"]],  # another order
])  # fmt: skip
def test_a_file_with_other_columns_is_refused(tmp_path, header):
    from common.engines.results_io import _RowWriter

    path = tmp_path / "results.csv"
    path.write_text(",".join(header) + "\n")
    before = path.read_bytes()
    with pytest.raises(RobustsegError, match="columns differ"):
        _RowWriter(path)
    assert path.read_bytes() == before
