"""Atomic checkpoints, resume from the latest one, and one-line weight-loading errors."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from common.engines import AtomicCheckpointSaver, ResumeFromLatest, latest_checkpoint, load_weights
from common.errors import RobustsegError


def _trainer(net: nn.Module, opt: torch.optim.Optimizer, data: list[torch.Tensor]) -> Engine:
    def step(engine, batch):
        opt.zero_grad()
        loss = (net(batch) ** 2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    return Engine(step)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def test_interval_checkpoints_and_latest(tmp_path):
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    engine = _trainer(net, opt, [])
    AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"network": net, "optimizer": opt, "trainer": engine}, save_interval=1,
        n_saved=1,
    ).attach(engine)
    engine.run([torch.randn(4, 3) for _ in range(2)], max_epochs=3)
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name.endswith("checkpoint_epoch=3.pt")
    assert not list(tmp_path.glob("tmp*")), "temporary files must be renamed away"


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    net = _net()
    engine = Engine(lambda e, b: 0.0)
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"network": net}, save_interval=1)
    saver.attach(engine)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        engine.run([0], max_epochs=1)
    assert list(tmp_path.iterdir()) == []


def test_resume_continues_to_max_epochs(tmp_path):
    data = [torch.randn(4, 3) for _ in range(3)]
    # uninterrupted reference run
    ref = _net()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    _trainer(ref, ref_opt, data).run(data, max_epochs=4)

    # run 2 epochs, "crash", then rerun the same command with max_epochs=4
    def run(max_epochs: int) -> tuple[nn.Module, Engine]:
        net = _net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        engine = _trainer(net, opt, data)
        objs = {"network": net, "optimizer": opt, "trainer": engine}
        AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict=objs, save_interval=1, n_saved=1).attach(engine)
        ResumeFromLatest(str(tmp_path), objs).attach(engine)
        epochs = []
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
        engine.run(data, max_epochs=max_epochs)
        return net, engine, epochs

    run(2)
    net, engine, epochs = run(4)
    assert epochs == [3, 4], "the resumed run must only do the missing epochs"
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)


def test_resume_disabled_starts_fresh(tmp_path):
    net = _net()
    engine = _trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), [])
    torch.save({"network": net.state_dict()}, tmp_path / "checkpoint_epoch=5.pt")
    ResumeFromLatest(str(tmp_path), {"network": net, "trainer": engine}, enabled=False).attach(engine)
    engine.run([torch.randn(2, 3)], max_epochs=1)
    assert engine.state.epoch == 1


def test_resume_from_corrupt_checkpoint_is_one_line(tmp_path):
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"not a checkpoint")
    net = _net()
    engine = _trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), [])
    ResumeFromLatest(str(tmp_path), {"network": net, "trainer": engine}).attach(engine)
    with pytest.raises(RobustsegError, match="cannot resume"):
        engine.run([torch.randn(2, 3)], max_epochs=2)


@pytest.mark.parametrize("wrap", [False, True])
def test_load_weights_round_trip(tmp_path, wrap):
    src, dst = _net(), nn.Linear(3, 2)
    state = src.state_dict()
    torch.save({"model": state} if wrap else state, tmp_path / "model.pt")
    load_weights(dst, tmp_path / "model.pt")
    for a, b in zip(src.parameters(), dst.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "not found"),
        (b"garbage", "cannot be read"),
        ({"weight": torch.zeros(5, 3), "bias": torch.zeros(5)}, "shape mismatch"),
        ({"weight": torch.zeros(2, 3)}, "missing"),
        ({"weight": torch.zeros(2, 3), "bias": torch.zeros(2), "extra": torch.zeros(1)}, "unexpected"),
        ([1, 2, 3], "not a network state dict"),
    ],
)
def test_load_weights_errors(tmp_path, content, match):
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(RobustsegError, match=match) as info:
        load_weights(nn.Linear(3, 2), path)
    assert "\n" not in str(info.value)


def _validator(scores: list[float], net: nn.Module, save_dir) -> tuple[Engine, AtomicCheckpointSaver]:
    """An evaluator whose key metric takes the given values on successive runs."""
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _score(e):
        e.state.metrics = {"val_mean_dice": scores.pop(0)}

    engine.state.key_metric_name = "val_mean_dice"
    saver = AtomicCheckpointSaver(save_dir=str(save_dir), save_dict={"model": net}, save_key_metric=True,
                                  key_metric_name="val_mean_dice", key_metric_filename="model.pt")
    saver.attach(engine)
    return engine, saver


def test_best_record_survives_resume(tmp_path):
    net = _net()
    validator, saver = _validator([0.9], net, tmp_path)
    validator.run([0], max_epochs=1)
    best = torch.load(tmp_path / "model.pt", weights_only=True)
    record = saver.best_record.state_dict()

    # a resumed run: new objects, the record restored from the interval checkpoint, then a worse validation
    worse = nn.Linear(3, 2)
    validator2, saver2 = _validator([0.5], worse, tmp_path)
    saver2.best_record.load_state_dict(record)
    validator2.run([0], max_epochs=1)
    kept = torch.load(tmp_path / "model.pt", weights_only=True)
    for key in best:
        assert torch.equal(best[key], kept[key]), "a worse model must not replace the best one after resuming"


def test_rerun_of_a_finished_training_does_nothing(tmp_path):
    data = [torch.randn(4, 3) for _ in range(2)]

    def run(max_epochs: int):
        net = _net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        engine = _trainer(net, opt, data)
        objs = {"network": net, "optimizer": opt, "trainer": engine}
        AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict=objs, save_interval=1, n_saved=1).attach(engine)
        engine.state.max_epochs = max_epochs  # as MONAI's SupervisedTrainer sets it before run()
        ResumeFromLatest(str(tmp_path), objs)(engine)
        epochs = []
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
        engine.run(data, max_epochs=max_epochs)
        return net, epochs

    first, _ = run(2)
    again, epochs = run(2)
    assert epochs == [], "a finished training must not start over"
    for a, b in zip(first.parameters(), again.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(RobustsegError, match="already ran 2 epochs"):
        run(1)
