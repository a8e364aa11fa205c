"""Tests for :mod:`common.data.splits`: a malformed datalist is one line naming the datalist and the entry."""

from __future__ import annotations

import json

import pytest

from common.data.splits import load_split
from common.errors import RobustsegError


def _datalist(tmp_path, content) -> str:
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(content))
    return str(path)


GOOD = {"image": ["a_t1.nii.gz", "a_t1ce.nii.gz", "a_t2.nii.gz", "a_flair.nii.gz"], "label": "a_seg.nii.gz"}


def test_paths_resolve_against_the_datalists_folder_even_outside_it(tmp_path):
    entry = {**GOOD, "image": [f"../elsewhere/{p}" for p in GOOD["image"]]}
    (item,) = load_split(_datalist(tmp_path, {"testing": [entry]}), "testing")
    assert item["image"][0] == str(tmp_path.parent / "elsewhere" / "a_t1.nii.gz")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ([GOOD], r"holds a JSON list, expected an object with 'training'/'testing' lists\."),
        (7, r"holds a JSON int, expected an object"),
        ({"testing": GOOD}, r"'testing' is a dict, expected a list of subject entries\."),
        ({"testing": [5]}, r"testing\[0\] is 5, expected an object with an 'image' key\."),
        ({"testing": [{"label": "x"}]}, r"testing\[0\]: 'image' is None, expected a file path or a list"),
        ({"testing": [{**GOOD, "image": []}]}, r"'image' is \[\], expected a file path or a list"),
        ({"testing": [{**GOOD, "image": ["a", 3]}]}, r"'image' is \['a', 3\], expected"),
        ({"testing": [{**GOOD, "image": "a\u0000b"}]}, r"'image' is 'a\\x00b', expected"),
        ({"testing": [{**GOOD, "label": 1}]}, r"'label' is 1, expected a file path\."),
        ({"testing": [{**GOOD, "subject": 1}]}, r"'subject' is 1, expected a string id\."),
        ({"training": [GOOD], "testing": [GOOD], "validation": "x"}, r"'validation' is a str, expected a list"),
    ],
)
def test_malformed_datalists_are_one_line(tmp_path, content, match):
    path = _datalist(tmp_path, content)
    with pytest.raises(RobustsegError, match=match) as caught:
        load_split(path, "testing")
    assert str(caught.value).startswith(path) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "test"}, r"split must be one of \['training', 'validation', 'testing'\].*did you mean 'testing'"),
        ({"split": "testing", "seed": -1}, r"seed must be an integer >= 0, got -1\."),
        ({"split": "training", "val_fraction": float("nan")}, r"val_fraction must be in \[0, 1\), got nan\."),
        ({"split": "training", "val_fraction": "0.1"}, r"val_fraction must be in \[0, 1\), got 0\.1\."),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, match):
    with pytest.raises(RobustsegError, match=match):
        load_split(_datalist(tmp_path, {"training": [GOOD, GOOD], "testing": [GOOD]}), **kwargs)
