"""DistillationStep: the student learns the teacher's soft labels at T inside a real SupervisedTrainer."""

from __future__ import annotations

import copy

import pytest
import torch

from common.defenses import DistillationStep
from common.errors import RobustsegError
from common.losses import DistillationDiceLoss, SoftDiceLoss


@pytest.fixture
def teacher(make_net):
    """A teacher with dropout (in train mode it would not be deterministic)."""
    return make_net(seed=5, dropout=0.5)


@pytest.mark.parametrize("temperature", [1.0, 20.0])
@pytest.mark.parametrize("teacher_temperature", [None, 1.0])
def test_loss_pred_and_gradient(temperature, teacher_temperature, teacher, make_net, samples, make_trainer, recorder):
    student = make_net(seed=0)
    initial = copy.deepcopy(student)
    teacher_before = copy.deepcopy(teacher.state_dict())
    data = samples(2)
    loss = DistillationDiceLoss(temperature, teacher_temperature=teacher_temperature)
    step = DistillationStep(teacher, temperature)
    teacher.train()  # e.g. a handler switched every module to train mode after the step was built
    trainer = make_trainer(student, step, data, loss=loss)
    events = recorder(trainer)
    trainer.run()

    images = torch.stack([d["image"] for d in data])
    labels = torch.stack([d["label"] for d in data])
    with torch.no_grad():
        teacher_logits = copy.deepcopy(teacher).eval()(images)
    student_logits = initial(images)
    expected = loss(student_logits, teacher_logits)
    expected.backward()

    (output,) = events.outputs
    assert output["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(output["pred"].detach(), student_logits.detach())  # raw logits: the student at T = 1
    assert torch.equal(output["label"], labels)
    (grads,) = events.grads
    for name, param in initial.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-5, atol=1e-7)
    # the teacher is frozen and untouched
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_runs_in_trainer_with_handlers(teacher, make_net, run_with_handlers):
    before = copy.deepcopy(teacher.state_dict())
    run_with_handlers(
        make_net(seed=0),
        DistillationStep(teacher, temperature=100),
        loss=DistillationDiceLoss(100),
        lr=1000.0,  # the gradient of a loss at T = 100 is about 100 times smaller
    )
    # only the student learns
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_distillation_lowers_the_loss(teacher, make_net, samples, make_trainer, recorder):
    """A few epochs on one batch move the student towards the teacher's soft labels."""
    trainer = make_trainer(
        make_net(seed=0), DistillationStep(teacher, 5.0), samples(2), loss=DistillationDiceLoss(5.0), lr=50.0,
        max_epochs=8,
    )
    events = recorder(trainer)
    trainer.run()
    losses = [o["loss"].item() for o in events.outputs]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("loss", [SoftDiceLoss(), torch.nn.CrossEntropyLoss()])
def test_trainer_loss_that_is_not_distillation_is_an_error(loss, teacher, make_net, samples, make_trainer):
    """No silent fallback to soft labels at T: the trainer's loss must say which teacher temperature it uses."""
    student = make_net()
    before = copy.deepcopy(student.state_dict())
    trainer = make_trainer(student, DistillationStep(teacher, 20.0), samples(2), loss=loss)
    message = (f"loss_function is a {type(loss).__name__}, expected a DistillationDiceLoss: set loss to "
               r"common.losses.DistillationDiceLoss\(temperature=20, teacher_temperature")
    with pytest.raises(RobustsegError, match=message) as info:
        trainer.run()
    assert "\n" not in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items()), "no step was taken"


def test_temperature_mismatch_with_trainer_loss(teacher, make_net, samples, make_trainer):
    trainer = make_trainer(make_net(), DistillationStep(teacher, 20.0), samples(2), loss=DistillationDiceLoss(100.0))
    with pytest.raises(RobustsegError, match="temperature 100.0.*20.0"):
        trainer.run()


def test_teacher_is_the_student(make_net, samples, make_trainer):
    student = make_net()
    loss = DistillationDiceLoss(2.0)
    trainer = make_trainer(student, DistillationStep(copy.deepcopy(student), 2.0), samples(2), loss=loss)
    trainer.run()  # a copy is a separate network
    trainer = make_trainer(student, DistillationStep(student, 2.0), samples(2), loss=loss)
    with pytest.raises(RobustsegError, match="teacher is the network being trained"):
        trainer.run()


def test_teacher_with_other_channels(make_net, samples, make_trainer):
    step = DistillationStep(make_net(out_channels=3), 2.0)
    trainer = make_trainer(make_net(), step, samples(2), loss=DistillationDiceLoss(2.0))
    with pytest.raises(RobustsegError, match="do not match teacher logits"):
        trainer.run()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"temperature": 0}, "temperature"), ({"temperature": -5.0}, "temperature"), ({"teacher": "baseline"}, "teacher")],
)
def test_bad_arguments(kwargs, match, make_net):
    arguments = {"teacher": make_net(), "temperature": 2.0, **kwargs}
    with pytest.raises(RobustsegError, match=match) as info:
        DistillationStep(**arguments)
    assert "\n" not in str(info.value)
