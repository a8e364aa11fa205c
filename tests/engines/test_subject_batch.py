"""Subject batches (common/engines/subject_batch.py): ids, batches of a shard, preprocessed and stacked subjects."""

from __future__ import annotations

import pytest
import torch

from common.engines.subject_batch import batches_of, files_of, load_subjects, subject_id
from common.errors import RobustsegError


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"subject": "s1", "image": ["a/x_t1.nii.gz"]}, "s1"),
        ({"image": ["a/BraTS_001_t1.nii.gz", "a/BraTS_001_t2.nii.gz"]}, "BraTS_001_t1"),
        ({"image": "a/case.nii"}, "case"),
    ],
)
def test_subject_id(entry, expected):
    assert subject_id(entry) == expected


def test_an_entry_without_id_or_image_is_refused():
    with pytest.raises(RobustsegError, match=r"no 'subject' id and no image path"):
        subject_id({"label": "x.nii.gz"})


def test_files_of_lists_images_and_label():
    assert files_of({"image": ["a", "b"], "label": "c", "subject": "s"}) == ["a", "b", "c"]


@pytest.mark.parametrize(("size", "expected"), [(1, [[0], [1], [2]]), (2, [[0, 1], [2]]), (5, [[0, 1, 2]])])
def test_batches_keep_the_order(size, expected):
    assert batches_of([0, 1, 2], size) == expected


@pytest.mark.parametrize("size", [0, -1, 2.5])
def test_a_bad_batch_size_is_refused(size):
    with pytest.raises(RobustsegError, match=r"batch_size must be an integer >= 1"):
        batches_of([0, 1], size)


def _preprocessing(item):
    """A stand-in for a bundle's preprocessing: an image and a label of the size the entry names."""
    size = item["size"]
    generator = torch.Generator().manual_seed(item["seed"])
    image = torch.rand(4, size, size, size, generator=generator) * (1 + item["seed"])
    return {"image": image, "label": torch.zeros(1, size, size, size, dtype=torch.long)}


def test_subjects_are_stacked_by_grid_in_first_seen_order():
    entries = [{"subject": f"s{i}", "size": size, "seed": i} for i, size in enumerate([12, 16, 12])]
    batches = load_subjects(entries, _preprocessing, torch.device("cpu"))
    assert [b.subjects for b in batches] == [("s0", "s2"), ("s1",)]
    first = batches[0]
    assert first.images.shape == (2, 4, 12, 12, 12) and first.labels.shape == (2, 1, 12, 12, 12)
    assert torch.equal(first.images[1], _preprocessing(entries[2])["image"])
    assert len(first.qualities) == 2 and first.qualities[1].data_range == pytest.approx(
        float(first.images[1].max() - first.images[1].min())
    )
    part = first.select([1])
    assert part.subjects == ("s2",) and torch.equal(part.images, first.images[1:])
    assert part.qualities == (first.qualities[1],) and first.select([0, 1]) is first
