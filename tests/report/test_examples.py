"""Example volumes for the slice panels: index checking, reorientation to RAS, slice choice, one test per raise."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from common.errors import RobustsegError
from common.report.examples import ExampleWriter, example_severity, load_example_volumes, load_examples


@pytest.fixture
def example(tmp_path, make_examples):
    return make_examples(tmp_path, "synth_000", n=16)


def test_volumes_are_reoriented_to_ras_and_the_slice_has_the_largest_tumour_area(example):
    (subject,) = load_examples(example.parent)
    assert subject.subject == "synth_000" and subject.shape == (16, 16, 16)
    volumes = load_example_volumes(subject)
    # The files are stored with affine diag(-1, -1, 1): RAS flips the first two axes.
    label = np.asarray(nib.load(example / "label.nii.gz").dataobj)[::-1, ::-1, :]
    image = np.asarray(nib.load(example / "image.nii.gz").dataobj)[:, ::-1, ::-1, :]  # channel-first on disk
    np.testing.assert_array_equal(volumes.label, label)
    np.testing.assert_array_equal(volumes.channel(volumes.image, "t1ce"), image[1])
    areas = [(label[:, :, z] > 0).sum() for z in range(16)]
    assert volumes.axial_slice == int(np.argmax(areas)) and areas[volumes.axial_slice] == max(areas) > 0
    entry = next(e for e in subject.entries if e.attack == "FGSM" and e.threat == "white-box")
    adversarial = np.asarray(nib.load(entry.adversarial).dataobj)[:, ::-1, ::-1, :]
    np.testing.assert_array_equal(volumes.channel(volumes.adversarial(entry), "flair"), adversarial[3])
    clean = next(e for e in subject.entries if e.threat == "clean")
    assert clean.adversarial is None and volumes.adversarial(clean) is volumes.image


def test_channel_last_images_are_read_like_channel_first(example):
    volumes = load_example_volumes(load_examples(example.parent)[0])
    image = nib.load(example / "image.nii.gz")
    channel_last = np.moveaxis(np.asarray(image.dataobj), 0, -1)[:, :, :, None, :]  # MONAI SaveImage: (X, Y, Z, 1, C)
    nib.save(nib.Nifti1Image(channel_last, image.affine), example / "image.nii.gz")
    again = load_example_volumes(load_examples(example.parent)[0])
    np.testing.assert_array_equal(again.image, volumes.image)


def test_missing_examples_folder_gives_no_examples(tmp_path):
    assert load_examples(tmp_path / "examples") == []


def _index(folder):
    return json.loads((folder / "index.json").read_text())


def _set_index(folder, index):
    (folder / "index.json").write_text(json.dumps(index))


def _edit_entry(key, value):
    def edit(folder):
        index = _index(folder)
        index["entries"][1][key] = value
        _set_index(folder, index)

    return edit


def _replace_volume(name, make):
    def edit(folder):
        path = folder / _index(folder)["entries"][4][name] if name != "label" else folder / "label.nii.gz"
        nib.save(nib.Nifti1Image(make(), np.eye(4)), path)

    return edit


def _drop_key(folder):
    index = _index(folder)
    del index["entries"][0]["threat"]
    _set_index(folder, index)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda f: (f / "index.json").write_text("{not json"), "cannot be read as JSON"),
        (lambda f: _set_index(f, [1, 2]), "expected an object with 'subject', 'image', 'label'"),
        (lambda f: (f / "image.nii.gz").unlink(), r"image names image.nii.gz, but .* does not exist"),
        (_edit_entry("prediction", "gone_pred.nii.gz"), "prediction names gone_pred.nii.gz, but"),
        (_edit_entry("adversarial", 5), r"entries\[1\].adversarial is 5; expected a file name"),
        (_drop_key, r"entries\[0\] is .*; expected an object with keys"),
        (_edit_entry("epsilon", "abc"), r"entries\[1\].epsilon is 'abc'; expected a finite number >= 0"),
        (_edit_entry("severity", 7), r"entries\[1\].severity is 7; expected an integer 1-5 or null"),
        (_edit_entry("threat", "corruption"), r"entries\[1\] is a corruption entry without a severity"),
        (lambda f: (f / "label.nii.gz").write_bytes(b"garbage"), "cannot read the NIfTI file"),
        (_replace_volume("label", lambda: np.zeros((16, 16, 16, 2), np.int16)), "expected a 3-D label map"),
        (_replace_volume("prediction", lambda: np.zeros((16, 16, 15), np.int16)), "expected a label map of shape"),
        (_replace_volume("adversarial", lambda: np.zeros((3, 16, 16, 16), np.float32)), "expected a 4-channel image"),
    ],
)
def test_invalid_example_index_raises(example, corrupt, message):
    corrupt(example)
    with pytest.raises(RobustsegError, match=message):
        load_examples(example.parent)


def test_truncated_voxel_data_raises_when_read(example):
    path = example / "label.nii.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) // 2]))  # the header still reads, the voxels do not
    (subject,) = load_examples(example.parent)
    with pytest.raises(RobustsegError, match="cannot read the NIfTI voxels"):
        load_example_volumes(subject)


def test_nan_voxels_raise_when_read(example):
    image = nib.load(example / "image.nii.gz")
    data = np.asarray(image.dataobj).copy()
    data[1, 3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), example / "image.nii.gz")
    (subject,) = load_examples(example.parent)
    with pytest.raises(RobustsegError, match="NaN or Inf voxels"):
        load_example_volumes(subject)


def test_written_examples_read_back(tmp_path):
    """What the robustness evaluation writes (ExampleWriter) is what the report reads (load_examples)."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 4, 8, 8, 8, generator=generator)
    label = torch.tensor([0, 1, 2, 4])[torch.randint(0, 4, (1, 1, 8, 8, 8), generator=generator)]
    adversarial = (image + 0.05).clamp(0, 1)
    folder = tmp_path / "examples" / "synth_000"
    writer = ExampleWriter(folder, "synth_000", image, label, affine=torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0])))
    writer.add("base", "none", "clean", 0.0, None, label[0], source=None)
    writer.add("base", "FGSM", "white-box", 0.05, adversarial, label[0], source=None)
    writer.add("other", "FGSM", "transfer", 0.05, adversarial, label[0], source="base")
    index = writer.finish()
    assert index == folder / "index.json"
    entries = [
        {"model": "base", "attack": "none", "threat": "clean", "epsilon": 0.0, "adversarial": None,
         "prediction": "base__none__eps0_pred.nii.gz"},
        {"model": "base", "attack": "FGSM", "threat": "white-box", "epsilon": 0.05,
         "adversarial": "base__FGSM__eps0.05_adv.nii.gz", "prediction": "base__FGSM__eps0.05_pred.nii.gz"},
        {"model": "other", "attack": "FGSM", "threat": "transfer", "epsilon": 0.05,
         "adversarial": "base__FGSM__eps0.05_adv.nii.gz",  # the source's file, written once
         "prediction": "other__FGSM__transfer-from-base__eps0.05_pred.nii.gz"},
    ]  # fmt: skip
    expected = {"subject": "synth_000", "image": "image.nii.gz", "label": "label.nii.gz", "entries": entries}
    assert index.read_text() == json.dumps(expected, indent=1) + "\n"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["index.json", "image.nii.gz", "label.nii.gz", *{e["adversarial"] for e in entries[1:]},
         *(e["prediction"] for e in entries)]
    )  # fmt: skip
    (subject,) = load_examples(tmp_path / "examples")
    assert subject.subject == "synth_000" and subject.shape == (8, 8, 8)
    assert [(e.model, e.threat, e.adversarial and e.adversarial.name) for e in subject.entries] == [
        (e["model"], e["threat"], e["adversarial"]) for e in entries
    ]
    volumes = load_example_volumes(subject)
    ras = label[0, 0].numpy()[::-1, ::-1, :]  # the affine flips the first two axes
    np.testing.assert_array_equal(volumes.label, ras)
    np.testing.assert_array_equal(volumes.prediction(subject.entries[2]), ras)
    np.testing.assert_allclose(volumes.channel(volumes.adversarial(subject.entries[1]), "t2"),
                               adversarial[0, 2].numpy()[::-1, ::-1, :])  # fmt: skip


def _tensors(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 4, 8, 8, 8, generator=generator)
    label = torch.tensor([0, 1, 2, 4])[torch.randint(0, 4, (1, 1, 8, 8, 8), generator=generator)]
    return image, label


@pytest.mark.parametrize("with_corruptions", [False, True])
def test_index_round_trips_with_and_without_severity(tmp_path, with_corruptions):
    """Attack-only indexes keep the old format (no ``severity`` key) and load with ``severity`` None; corruption
    entries carry theirs, and one corrupted input serves every model."""
    image, label = _tensors()
    folder = tmp_path / "examples" / "synth_000"
    writer = ExampleWriter(folder, "synth_000", image, label)
    writer.add("base", "none", "clean", 0.0, None, label[0], source=None)
    writer.add("base", "FGSM", "white-box", 0.05, (image + 0.05).clamp(0, 1), label[0], source=None)
    if with_corruptions:
        corrupted = image.clone()
        corrupted[:, 2] = 0  # missing_t2 at its worst
        for model in ("base", "other"):
            writer.add(model, "missing_t2", "corruption", 0.0, corrupted, label[0], source=None, severity=3)
    raw = json.loads(writer.finish().read_text())["entries"]
    assert [e.get("severity") for e in raw] == [None, None] + ([3, 3] if with_corruptions else [])
    assert ["severity" in e for e in raw[:2]] == [False, False]
    (subject,) = load_examples(tmp_path / "examples")
    assert [e.severity for e in subject.entries] == [e.get("severity") for e in raw]
    if with_corruptions:
        base, other = subject.entries[2:]
        assert base.adversarial == other.adversarial == folder / "missing_t2__sev3_corrupted.nii.gz"
        assert base.prediction.name == "base__missing_t2__sev3_pred.nii.gz" and base.threat == "corruption"
        volumes = load_example_volumes(subject)
        assert not volumes.channel(volumes.adversarial(other), "t2").any()
        kept = volumes.channel(volumes.adversarial(other), "t1")
        np.testing.assert_array_equal(kept, volumes.channel(volumes.image, "t1"))


@pytest.mark.parametrize(
    ("threat", "severity"), [("corruption", None), ("white-box", 3), ("corruption", 6), ("corruption", True)]
)
def test_writer_refuses_a_severity_that_does_not_fit_the_threat(tmp_path, threat, severity):
    image, label = _tensors()
    writer = ExampleWriter(tmp_path / "s", "s", image, label)
    with pytest.raises(RobustsegError, match=rf"severity must be an integer 1-5 .* got {severity!r} for threat"):
        writer.add("base", "gibbs", threat, 0.0, image, label[0], source=None, severity=severity)


def test_reopen_keeps_the_other_entries_and_replaces_those_of_the_threat(tmp_path):
    image, label = _tensors()
    folder = tmp_path / "examples" / "s"
    writer = ExampleWriter(folder, "s", image, label, affine=torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0])))
    writer.add("base", "none", "clean", 0.0, None, label[0], source=None)
    writer.add("base", "gibbs", "corruption", 0.0, image, label[0], source=None, severity=1)
    writer.finish()
    again = ExampleWriter.reopen(folder, "s", drop_threat="corruption")
    again.add("base", "gibbs", "corruption", 0.0, image * 0.5, label[0], source=None, severity=3)
    again.finish()
    (subject,) = load_examples(tmp_path / "examples")
    assert [(e.threat, e.severity) for e in subject.entries] == [("clean", None), ("corruption", 3)]
    np.testing.assert_array_equal(nib.load(folder / "gibbs__sev3_corrupted.nii.gz").affine, np.diag([-1.0, -1, 1, 1]))


def test_reopen_of_an_unreadable_index_raises(tmp_path):
    image, label = _tensors()
    ExampleWriter(tmp_path / "s", "s", image, label)  # no finish(): no index
    with pytest.raises(RobustsegError, match="cannot be read as an example index"):
        ExampleWriter.reopen(tmp_path / "s", "s", drop_threat="corruption")


@pytest.mark.parametrize(
    ("severities", "expected"),
    [([1, 2, 3, 4, 5], 3), ([5, 1, 3], 3), ([1, 5], 1), ([4, 5], 4), ([1, 2, 4, 5], 2), ([2, 4, 5], 4), ([5, 5], 5)],
)
def test_example_severity_is_three_else_the_lower_middle(severities, expected):
    assert example_severity(severities) == expected


@pytest.mark.parametrize("severities", [[], [0, 3], [6], [True], "3", None])
def test_example_severity_refuses_anything_but_severities(severities):
    with pytest.raises(RobustsegError, match=r"severities must be a non-empty list of integers 1-5"):
        example_severity(severities)
