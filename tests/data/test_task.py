"""The segmentation tasks (common/data/task.py): BraTS as before, and a generic task's classes, Dice and losses."""

from __future__ import annotations

import pytest
import torch

from common.attacks.base import LOSSES, hard_dice
from common.data.labels import logits_to_labels
from common.data.task import BRATS, ClassTask, check_task, is_background, score_columns
from common.errors import RobustsegError
from common.metrics.dice import class_dice, region_dice


def test_brats_task_is_what_the_attacks_did_before():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 5, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 4])[torch.randint(0, 4, (2, 1, 6, 5, 4), generator=g)]
    torch.testing.assert_close(BRATS.predict(logits), logits_to_labels(logits))
    torch.testing.assert_close(BRATS.dice(BRATS.predict(logits), labels), region_dice(logits_to_labels(logits), labels))
    torch.testing.assert_close(BRATS.hard_dice(logits, labels), hard_dice(logits, labels))
    assert BRATS.score_names == ("WT", "TC", "ET") and score_columns(BRATS) == ["dice_wt", "dice_tc", "dice_et"]
    for name in LOSSES:
        torch.testing.assert_close(BRATS.loss(name)(logits, labels), LOSSES[name]()(logits, labels))
    with pytest.raises(RobustsegError, match="not BraTS labels"):
        BRATS.check_labels(labels.clamp(max=3))
    assert check_task(None) is BRATS


@pytest.mark.parametrize(
    ("names", "background", "scored"),
    [
        (("background", "spleen"), 0, ("spleen",)),
        (("liver", "tumour", "BG"), 2, ("liver", "tumour")),
        (("peripheral zone", "transition zone", "other"), 2, ("peripheral zone", "transition zone")),
        (("a", "b", "c"), 0, ("b", "c")),  # no background name: channel 0, MONAI's convention
    ],
)
def test_class_task_finds_its_background(names, background, scored):
    task = ClassTask(names)
    assert task.background == background and task.score_names == scored
    assert task.values == tuple(range(len(names)))


def test_class_task_scores_every_class_without_background():
    task = ClassTask(("a", "b"), background=None)
    assert task.score_names == ("a", "b") and task.scored == (0, 1)


@pytest.mark.parametrize(
    ("names", "background", "message"),
    [
        (("spleen",), -1, "a task needs at least two"),
        (("a", "a"), -1, "repeats a class name"),
        (("a", "b"), 2, "background: 2 is not a channel"),
    ],
)
def test_class_task_refuses_bad_classes(names, background, message):
    with pytest.raises(RobustsegError, match=message):
        ClassTask(names, background)


def test_background_names_and_columns():
    assert is_background("Background") and is_background("BG") and not is_background("spleen")
    assert score_columns(ClassTask(("background", "Left kidney", "right-kidney"))) == [
        "dice_left_kidney", "dice_right_kidney"]  # fmt: skip
    with pytest.raises(RobustsegError, match="same column name twice"):
        score_columns(ClassTask(("background", "a b", "a-b")))


@pytest.mark.parametrize("spatial", [(6, 5, 4), (9, 7)])
@pytest.mark.parametrize("classes", [2, 3])
def test_class_task_predicts_scores_and_builds_every_loss(spatial, classes):
    task = ClassTask(tuple(["background", *(f"organ{i}" for i in range(1, classes))]))
    g = torch.Generator().manual_seed(classes)
    logits = torch.randn(2, classes, *spatial, generator=g, requires_grad=True)
    labels = torch.randint(0, classes, (2, 1, *spatial), generator=g)
    prediction = task.predict(logits)
    torch.testing.assert_close(prediction, logits.argmax(1, keepdim=True))
    torch.testing.assert_close(task.dice(prediction, labels), class_dice(prediction, labels, classes, task.scored))
    torch.testing.assert_close(task.hard_dice(logits, labels), task.dice(prediction, labels).mean(1))
    for name in LOSSES:
        loss = task.loss(name)
        value = loss(logits, labels)
        (grad,) = torch.autograd.grad(value, logits)
        assert value.ndim == 0 and torch.isfinite(value) and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name
    with pytest.raises(RobustsegError, match=rf"expected \(B, {classes}, \*spatial\)"):
        task.predict(logits[:, :1])
    with pytest.raises(RobustsegError, match=rf"values \[{classes}\]"):
        task.check_labels(labels + classes - labels.max())
    with pytest.raises(RobustsegError, match="loss must be one of"):
        task.loss("dice_plus")


def test_class_task_soft_dice_ignores_the_background():
    """The paper's soft Dice over the foreground classes: a perfect, confident prediction has loss ~0."""
    task = ClassTask(("background", "organ"))
    labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    labels[..., :2, :2] = 1
    logits = torch.cat([(labels == 0).float(), (labels == 1).float()], 1) * 50
    assert float(task.loss("soft_dice")(logits, labels)) == pytest.approx(0, abs=1e-4)
    assert float(task.loss("soft_dice")(-logits, labels)) == pytest.approx(1, abs=1e-4)
