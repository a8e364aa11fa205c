"""Two-pass perturbed training (eq. 9): the accumulated gradient is eq. 9's, and the steps work in SupervisedTrainer."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from monai.engines.utils import IterationEvents

from common.attacks import FGSM
from common.defenses import AdversarialTrainingStep, DistillationStep, NoiseAugmentationStep, PerturbedTrainingStep
from common.engines import AutocastInferer
from common.errors import RobustsegError
from common.losses import DistillationDiceLoss, SoftDiceLoss


def _shift(model, images, labels):
    """A deterministic perturbation that depends on the labels: what the step is given must reach the loss."""
    return images + 0.05 * (labels > 0).to(images)


STEPS = {
    "adversarial": lambda beta: AdversarialTrainingStep(epsilon=0.05, beta=beta),
    "noise": lambda beta: NoiseAugmentationStep(radius=0.01, beta=beta, seed=3),
    "custom": lambda beta: PerturbedTrainingStep(_shift, beta=beta),
}


def _record_perturbed(step):
    """Wrap ``step.perturb`` so the perturbed batches it makes are kept."""
    made = []
    perturb = step.perturb

    def recording(engine, images, labels):
        out = perturb(engine, images, labels)
        made.append(out.detach().clone())
        return out

    step.perturb = recording
    return made


@pytest.mark.parametrize("kind", sorted(STEPS))
@pytest.mark.parametrize("beta", [0.5, 0.2])
def test_accumulated_gradient_equals_single_pass_eq9(kind, beta, make_net, samples, make_trainer, recorder):
    net = make_net()
    initial = copy.deepcopy(net)
    data = samples(2)
    loss = SoftDiceLoss(ce_weight=0.5)
    step = STEPS[kind](beta)
    made = _record_perturbed(step)
    trainer = make_trainer(net, step, data, loss=loss)
    events = recorder(trainer)
    trainer.run()

    images = torch.stack([d["image"] for d in data])
    labels = torch.stack([d["label"] for d in data])
    (perturbed,) = made
    if kind == "adversarial":  # the attack uses the trainer's loss on the model before the update
        expected_adv = FGSM(0.05, loss=loss)(initial, images, labels)
        torch.testing.assert_close(perturbed, expected_adv, rtol=0, atol=0)
    assert not torch.equal(perturbed, images)

    # eq. 9 as ONE objective, one backward pass
    initial.zero_grad()
    clean_loss, perturbed_loss = loss(initial(images), labels), loss(initial(perturbed), labels)
    (beta * clean_loss + (1 - beta) * perturbed_loss).backward()
    (grads,) = events.grads
    for name, param in initial.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-5, atol=1e-7)

    (output,) = events.outputs
    assert output["loss"].item() == pytest.approx((beta * clean_loss + (1 - beta) * perturbed_loss).item(), rel=1e-5)
    assert output["loss_clean"].item() == pytest.approx(clean_loss.item(), rel=1e-5)
    assert output["loss_perturbed"].item() == pytest.approx(perturbed_loss.item(), rel=1e-5)
    # pred is the clean prediction; one SGD step of lr 0.1 with that gradient
    torch.testing.assert_close(output["pred"].detach(), initial(images).detach(), rtol=1e-5, atol=1e-6)
    for name, param in net.named_parameters():
        before = dict(initial.named_parameters())[name]
        torch.testing.assert_close(param.detach(), (before - 0.1 * before.grad).detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", sorted(STEPS))
def test_steps_run_in_trainer_with_handlers(kind, make_net, run_with_handlers):
    """Two iterations with a train metric (postprocessing on pred/label) and a StatsHandler attached."""
    _, events = run_with_handlers(make_net(), STEPS[kind](0.5))
    # both halves of eq. 9 reach the handlers beside the total
    assert all(math.isfinite(o["loss_clean"].item() + o["loss_perturbed"].item()) for o in events.outputs)


@pytest.mark.parametrize("kind", [*sorted(STEPS), "distillation"])
def test_steps_with_bf16_autocast_inferer(kind, make_net, samples, make_trainer, recorder):
    """The bundles' quick runs train through AutocastInferer (bf16 on CPU): the attack and teacher go through it too."""
    net = make_net()
    initial = copy.deepcopy(net)
    step = DistillationStep(make_net(seed=3), 20.0) if kind == "distillation" else STEPS[kind](0.5)
    loss = DistillationDiceLoss(20.0) if kind == "distillation" else SoftDiceLoss()
    trainer = make_trainer(net, step, samples(2), loss=loss, inferer=AutocastInferer())
    events = recorder(trainer)
    trainer.run()
    (output,) = events.outputs
    assert output["pred"].dtype == torch.float32 and math.isfinite(output["loss"].item())
    assert all(not torch.equal(p, q) for p, q in zip(net.parameters(), initial.parameters(), strict=True))


@pytest.mark.parametrize("accumulation_steps, optimizer_steps", [(1, 2), (2, 1)])
def test_gradient_accumulation_steps_like_monai(
    accumulation_steps, optimizer_steps, make_net, samples, make_trainer, monkeypatch
):
    net = make_net()
    trainer = make_trainer(net, STEPS["custom"](0.5), samples(4), accumulation_steps=accumulation_steps)
    calls = []
    step = trainer.optimizer.step
    monkeypatch.setattr(trainer.optimizer, "step", lambda *a, **k: calls.append(1) or step(*a, **k))
    trainer.run()
    assert len(calls) == optimizer_steps


def test_noise_step_is_reproducible_by_seed(make_net, samples, make_trainer):
    finals = []
    for seed in (7, 7, 8):
        net = make_net()
        make_trainer(net, NoiseAugmentationStep(radius=0.05, seed=seed), samples(4)).run()
        finals.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert torch.equal(finals[0], finals[1])
    assert not torch.equal(finals[0], finals[2])


def test_noise_step_draws_fresh_noise_each_iteration(make_net, samples, make_trainer):
    step = NoiseAugmentationStep(radius=0.01, seed=0)
    made = _record_perturbed(step)
    data = samples(2)
    make_trainer(make_net(), step, data + data).run()  # the same batch twice
    images = torch.stack([d["image"] for d in data])
    first, second = (m - images for m in made)
    assert not torch.equal(first, second)
    scale = images.abs().amax(dim=(1, 2, 3, 4), keepdim=True)
    assert ((first.abs() <= 0.01 * scale * (1 + 1e-6)) & (second.abs() <= 0.01 * scale * (1 + 1e-6))).all()


def test_outputs_decollate_like_monai(make_net, samples, make_trainer, recorder):
    trainer = make_trainer(make_net(), STEPS["adversarial"](0.5), samples(2))
    events = recorder(trainer)
    trainer.run()
    (items,) = events.decollated  # what handlers after MODEL_COMPLETED see: MONAI's decollated output
    assert len(items) == 2
    assert items[0]["pred"].shape == (4, 16, 16, 16) and items[0]["label"].shape == (1, 16, 16, 16)
    assert items[0]["loss"] == pytest.approx(events.outputs[0]["loss"].item())


def test_forward_completed_sees_clean_prediction(make_net, samples, make_trainer, recorder):
    net = make_net()
    initial = copy.deepcopy(net)
    data = samples(2)
    trainer = make_trainer(net, STEPS["noise"](0.5), data)
    events = recorder(trainer)
    trainer.run()
    images = torch.stack([d["image"] for d in data])
    torch.testing.assert_close(events.pred_at_forward[0], initial(images).detach(), rtol=1e-5, atol=1e-6)
    assert events.counts[IterationEvents.FORWARD_COMPLETED] == 1


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: AdversarialTrainingStep(epsilon=-0.01), "epsilon"),
        (lambda: AdversarialTrainingStep(epsilon=1.5), "epsilon"),
        (lambda: AdversarialTrainingStep(epsilon=0.05, beta=1.5), "beta"),
        (lambda: NoiseAugmentationStep(radius=-0.01), "radius"),
        (lambda: NoiseAugmentationStep(beta=-0.1), "beta"),
        (lambda: NoiseAugmentationStep(seed=-1), "seed"),
        (lambda: PerturbedTrainingStep(_shift, beta=True), "beta"),
        (lambda: PerturbedTrainingStep(None), "perturbation"),
        (lambda: PerturbedTrainingStep("fgsm"), "perturbation"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(RobustsegError, match=match) as info:
        make()
    assert "\n" not in str(info.value)
