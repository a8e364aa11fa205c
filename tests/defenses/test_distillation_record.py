"""The distillation record: centred logit norms, their ratio, the recipe, and the handler inside a SupervisedTrainer."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch

from common.defenses import (
    DistillationRecord,
    DistillationStep,
    centred_logit_norm,
    distillation_recipe,
    measure_logit_norms,
)
from common.errors import RobustsegError
from common.losses import DistillationDiceLoss


def _scaled(net: torch.nn.Module, factor: float) -> torch.nn.Module:
    """A copy of a TinyNet whose logits are ``factor`` times the original's (last layer's weights and bias scaled)."""
    scaled = copy.deepcopy(net)
    with torch.no_grad():
        for parameter in scaled[-1].parameters():
            parameter.mul_(factor)
    return scaled


def _teacher_bundle(tmp_path, train_temperature: float | None):
    """A folder with the training record a teacher bundle has (``train_temperature`` absent when ``None``)."""
    folder = tmp_path / "teacher"
    (folder / "models").mkdir(parents=True)
    record = {"base_filters": 4} if train_temperature is None else {"train_temperature": train_temperature}
    (folder / "models" / "training_settings.json").write_text(json.dumps(record))
    return folder


@pytest.mark.parametrize("shape", [(2, 4, 3, 5, 6), (1, 3, 7, 7)])
def test_centred_logit_norm_matches_numpy(shape):
    logits = np.random.default_rng(0).normal(size=shape) * 5
    expected = np.sqrt(((logits - logits.mean(axis=1, keepdims=True)) ** 2).sum(axis=1))
    np.testing.assert_allclose(centred_logit_norm(torch.tensor(logits)).numpy(), expected, rtol=1e-5)


def test_centred_logit_norm_ignores_a_common_shift_and_scales_linearly():
    logits = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    norm = centred_logit_norm(logits)
    torch.testing.assert_close(centred_logit_norm(logits + 7.0), norm)  # softmax cannot see this shift
    torch.testing.assert_close(centred_logit_norm(3.0 * logits), 3.0 * norm)


def test_centred_logit_norm_rejects_a_vector():
    with pytest.raises(RobustsegError, match=r"logits must be \(B, C, \*spatial\), got shape \(4,\)"):
        centred_logit_norm(torch.zeros(4))


@pytest.mark.parametrize(
    "temperature, teacher_temperature, trained_at, recipe",
    [(100, 100, 100, "paper"), (20, 1, 1, "approximation"), (20, 20, 1, "other"), (20, 1, 20, "other"),
     (5000, 5000, 5000, "paper")],
)  # fmt: skip
def test_recipe(temperature, teacher_temperature, trained_at, recipe):
    assert distillation_recipe(temperature, teacher_temperature, trained_at) == recipe


@pytest.mark.parametrize("factor", [1.0, 20.0, 500.0])
def test_ratio_of_a_network_scaled_by_t(factor, make_net, samples):
    """A student whose logits are T times the teacher's: ratio T, whatever the data and batching."""
    teacher = make_net(seed=5, dropout=0.5).train()  # dropout on: the measure must switch it off
    student = _scaled(make_net(seed=5, dropout=0.5), factor)
    data = [{"image": s["image"][None]} for s in samples(3)]
    result = measure_logit_norms(student, teacher, data)
    assert result["logit_norm_ratio"] == pytest.approx(factor, rel=1e-5)
    assert result["batches"] == 3 and result["voxels"] == 3 * 16**3
    with torch.no_grad():
        expected = float(centred_logit_norm(teacher.eval()(torch.cat([d["image"] for d in data]))).mean())
    assert result["teacher_logit_norm"] == pytest.approx(expected, rel=1e-5)
    teacher.train()
    measure_logit_norms(student, teacher, data)
    assert teacher.training and all(m.training for m in teacher.modules()), "modes restored"


def test_max_batches_and_inferer(make_net, samples):
    teacher = make_net(seed=1)
    calls = []

    def inferer(images, network):
        calls.append(images.shape[0])
        return network(images)

    data = [s["image"][None] for s in samples(4)]
    result = measure_logit_norms(_scaled(teacher, 2.0), teacher, data, inferer=inferer, max_batches=2)
    assert result["batches"] == 2 and calls == [1, 1, 1, 1]  # two batches, student and teacher each


@pytest.mark.parametrize(
    "batches, kwargs, match",
    [([], {}, "no batch to measure"), ([{"label": torch.zeros(1)}], {}, "a batch has no 'image' key"),
     ([[1, 2]], {}, "a batch holds a list"), ([torch.zeros(1, 4, 4, 4, 4)], {"max_batches": 0}, "max_batches")],
)  # fmt: skip
def test_measure_errors(batches, kwargs, match, make_net):
    with pytest.raises(RobustsegError, match=match) as info:
        measure_logit_norms(make_net(), make_net(seed=1), batches, **kwargs)
    assert "\n" not in str(info.value)


def test_measure_rejects_other_output_channels(make_net):
    with pytest.raises(RobustsegError, match="do not match teacher logits"):
        measure_logit_norms(make_net(), make_net(out_channels=3), [torch.rand(1, 4, 8, 8, 8)])


@pytest.mark.parametrize(
    "temperature, teacher_temperature, trained_at, recipe",
    [(20.0, 1.0, None, "approximation"), (20.0, 20.0, 20.0, "paper")],
)
def test_record_written_when_training_completes(
    temperature, teacher_temperature, trained_at, recipe, tmp_path, make_net, samples, make_trainer
):
    """The handler in a real SupervisedTrainer: the record holds the recipe, both temperatures and the ratio."""
    teacher = make_net(seed=5)
    student = make_net(seed=0)
    data = samples(2)
    handler = DistillationRecord(
        tmp_path / "models", teacher, _teacher_bundle(tmp_path, trained_at), temperature, teacher_temperature,
        data_loader=[{"image": torch.stack([d["image"] for d in data])}],
    )
    loss = DistillationDiceLoss(temperature, teacher_temperature=teacher_temperature)
    trainer = make_trainer(student, DistillationStep(teacher, temperature), data, loss=loss, handlers=[handler])
    trainer.run()

    record = json.loads((tmp_path / "models" / "distillation_record.json").read_text())
    assert record["recipe"] == recipe
    assert (record["temperature"], record["teacher_temperature"]) == (temperature, teacher_temperature)
    assert record["teacher_train_temperature"] == (1.0 if trained_at is None else trained_at)
    assert record["matching_logit_norm_ratio"] == temperature / teacher_temperature
    images = torch.stack([d["image"] for d in data])
    with torch.no_grad():
        direct = centred_logit_norm(student.eval()(images)).mean() / centred_logit_norm(teacher(images)).mean()
    assert record["logit_norm_ratio"] == pytest.approx(float(direct), rel=1e-5)
    assert record["student_weights"] == "the network at the end of training"


@pytest.mark.parametrize("factor", [5.0, 100.0])
def test_record_measures_the_saved_best_weights(factor, tmp_path, make_net, samples):
    """With ``models/model.pt`` present, the deployed (best-validated) student is measured, not the last epoch."""
    teacher = make_net(seed=5)
    (tmp_path / "models").mkdir()
    torch.save(_scaled(teacher, factor).state_dict(), tmp_path / "models" / "model.pt")
    handler = DistillationRecord(
        tmp_path / "models", teacher, _teacher_bundle(tmp_path, None), factor, 1.0,
        data_loader=[s["image"][None] for s in samples(2)],
    )
    last_epoch = make_net(seed=9)
    record = handler.record(last_epoch)
    assert record["logit_norm_ratio"] == pytest.approx(factor, rel=1e-5)
    assert record["student_weights"].endswith("model.pt")
    assert all(torch.equal(p, q) for p, q in zip(last_epoch.parameters(), make_net(seed=9).parameters(), strict=True))


def test_training_at_t_on_labels_at_one_grows_the_student_logits(tmp_path, make_net, samples, make_trainer):
    """The mechanism on a tiny network: a student started as a copy of its T = 1 teacher and trained at T = 10 on the
    teacher's soft labels at 1 raises its logit scale above the teacher's (ratio 1 at the start)."""
    teacher = make_net(seed=5)
    data = samples(2)
    batches = [torch.stack([d["image"] for d in data])]
    handler = DistillationRecord(tmp_path / "models", teacher, _teacher_bundle(tmp_path, 1.0), 10.0, 1.0, batches)
    student = copy.deepcopy(teacher).requires_grad_(True)
    assert handler.record(student)["logit_norm_ratio"] == pytest.approx(1.0)
    loss = DistillationDiceLoss(10.0, teacher_temperature=1.0)
    trainer = make_trainer(student, DistillationStep(teacher, 10.0), data, loss=loss, lr=20.0, max_epochs=30,
                           handlers=[handler])  # fmt: skip
    trainer.run()
    record = json.loads((tmp_path / "models" / "distillation_record.json").read_text())
    assert record["logit_norm_ratio"] > 1.5


@pytest.mark.parametrize("teacher_temperature, warns", [(1.0, True), (20.0, False)])
def test_warns_when_teacher_is_softened_at_another_temperature(
    teacher_temperature, warns, tmp_path, make_net, caplog
):
    with caplog.at_level(logging.WARNING, logger="common.defenses.distillation_record"):
        DistillationRecord(tmp_path, make_net(), _teacher_bundle(tmp_path, 20.0), 20.0, teacher_temperature, [])
    assert any("set teacher_temperature to 20" in r.getMessage() for r in caplog.records) == warns


@pytest.mark.parametrize(
    "kwargs, match",
    [({"teacher": "baseline"}, "teacher must be a torch.nn.Module, got str"),
     ({"temperature": 0}, "temperature must be a finite number > 0, got 0"),
     ({"teacher_temperature": -1.0}, "teacher_temperature must be a finite number > 0, got -1.0"),
     ({"max_batches": 0}, "max_batches"),
     ({"teacher_bundle": "no/such/teacher"}, "teacher bundle 'no/such/teacher' not found")],
)  # fmt: skip
def test_bad_arguments(kwargs, match, tmp_path, make_net):
    arguments = {"ckpt_dir": tmp_path, "teacher": make_net(), "teacher_bundle": _teacher_bundle(tmp_path, None),
                 "temperature": 20.0, "teacher_temperature": 1.0, "data_loader": [], **kwargs}  # fmt: skip
    with pytest.raises(RobustsegError, match=match) as info:
        DistillationRecord(**arguments)
    assert "\n" not in str(info.value)
