"""TrainingStep (common/defenses/training_step.py): a non-finite gradient skips the optimizer step, as CUDA AMP's
GradScaler does, instead of writing NaN into every weight."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events

from common.defenses import DistillationStep
from common.losses import DistillationDiceLoss


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_non_finite_gradient_skips_the_step(bad, make_net, samples, make_trainer, log_records):
    teacher, student = make_net(seed=5), make_net(seed=0)
    start = copy.deepcopy(student.state_dict())
    weight = student[0].weight
    calls = {"n": 0}

    def poison(grad: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return torch.full_like(grad, bad) if calls["n"] == 1 else grad  # the first iteration only

    weight.register_hook(poison)
    trainer = make_trainer(student, DistillationStep(teacher, 5.0), samples(4), loss=DistillationDiceLoss(5.0),
                           lr=50.0)  # fmt: skip
    records = log_records("common.defenses.training_step")
    stepped = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stepped.append(copy.deepcopy(student.state_dict())))
    trainer.run()
    assert trainer.state.iteration == 2 and trainer.state.skipped_steps == 1
    assert all(torch.equal(v, start[k]) for k, v in stepped[0].items()), "the poisoned step changed the weights"
    assert not all(torch.equal(v, start[k]) for k, v in stepped[1].items()), "the next step must train"
    assert all(torch.isfinite(v).all() for v in student.state_dict().values())
    assert len(records) == 1 and "non-finite gradient" in records[0].getMessage()


def test_finite_gradients_step_as_before(make_net, samples, make_trainer):
    """Without a bad gradient the step is the optimizer's own: the same weights as a plain SGD step."""
    teacher, student = make_net(seed=5), make_net(seed=0)
    twin = copy.deepcopy(student)
    trainer = make_trainer(student, DistillationStep(teacher, 5.0), samples(2), loss=DistillationDiceLoss(5.0), lr=50.0)
    trainer.run()
    assert getattr(trainer.state, "skipped_steps", 0) == 0
    batch = samples(2)
    images = torch.stack([b["image"] for b in batch])
    loss = DistillationDiceLoss(5.0)(twin(images), teacher.eval()(images))
    loss.backward()
    with torch.no_grad():
        for p in twin.parameters():
            p -= 50.0 * p.grad
    for (k, v), w in zip(student.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, msg=k)
