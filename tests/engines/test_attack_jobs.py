"""Attack jobs (common/engines/attack_jobs.py): FGSMs grouped into one-gradient sweeps, iterates scored, bad specs."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

from common.attacks import make_attack
from common.data.labels import logits_to_labels
from common.engines import DEFAULT_ATTACKS, build_jobs
from common.engines.attack_jobs import reusable_predictions
from common.errors import RobustsegError
from common.metrics.dice import region_dice

SWEEP = [0.01, 0.05, 0.1]


def _jobs(**kwargs):
    settings = {"attacks": DEFAULT_ATTACKS, "sweep": "FGSM", "sweep_epsilons": SWEEP, "epsilon": 0.05,
                "loss": "soft_dice", **kwargs}  # fmt: skip
    return build_jobs(**settings)


def test_the_table1_fgsm_is_a_point_of_the_sweep():
    sweep, ifgsm, tifgsm = _jobs()
    assert sweep.sweep and sweep.name == "FGSM" and [a.epsilon for a in sweep.attacks] == SWEEP
    assert sweep.table_epsilons == (0.05,) and sweep.final_iteration == 1
    assert (ifgsm.name, ifgsm.steps, ifgsm.table_epsilons, ifgsm.per_iteration) == ("i-FGSM", 10, (0.05,), True)
    assert (tifgsm.name, tifgsm.final_iteration, tifgsm.loss) == ("ti-FGSM", 10, "soft_dice")


def test_slots_are_one_per_epsilon_or_iterate():
    sweep, ifgsm, _ = _jobs()
    assert [(eps, k) for _, eps, k in sweep.slots()] == [(eps, 1) for eps in SWEEP]
    assert [k for _, _, k in ifgsm.slots()] == list(range(1, 11))
    assert [k for _, _, k in ifgsm.slots(final_only=True)] == [10]


def test_the_adaptive_jobs_divide_the_logits_by_the_temperature():
    jobs = _jobs(temperature=5.0)
    assert all("temperature=5.0" in repr(a) for job in jobs for a in job.attacks)


def test_run_scores_every_iterate_and_every_sweep_epsilon():
    torch.manual_seed(0)
    network = nn.Conv3d(4, 4, 1)
    image = torch.rand(1, 4, 6, 6, 6)
    label = torch.tensor([0, 1, 2, 4])[torch.randint(0, 4, (1, 1, 6, 6, 6))]
    sweep, ifgsm = _jobs(attacks=[{"name": "FGSM"}, {"name": "i-FGSM", "steps": 2}])
    swept = sweep.run(network, image, label)
    assert [(a.epsilon, a.iteration, a.loss) for a in swept] == [(eps, 1, "soft_dice") for eps in SWEEP]
    assert all(a.image.shape == image.shape for a in swept)
    iterates = ifgsm.run(network, image, label)
    assert [a.iteration for a in iterates] == [1, 2] and iterates[0].seconds <= iterates[1].seconds
    (final,) = ifgsm.run(network, image, label, final_only=True)
    assert final.iteration == 2 and torch.equal(final.image, iterates[1].image)


def test_iterates_carry_the_prediction_of_the_next_step_per_sample():
    """Iterate k was the input of step k + 1: its prediction comes from that pass; the last one has none."""
    torch.manual_seed(0)
    network = nn.Conv3d(4, 4, 1)
    images = torch.rand(2, 4, 6, 6, 6)
    labels = torch.tensor([0, 1, 2, 4])[torch.randint(0, 4, (2, 1, 6, 6, 6))]
    _, ifgsm = _jobs(attacks=[{"name": "FGSM"}, {"name": "i-FGSM", "steps": 3}])
    iterates = ifgsm.run(network, images, labels)
    assert [a.predictions is None for a in iterates] == [False, False, True]
    with torch.no_grad():
        for a in iterates[:2]:
            assert torch.equal(a.predictions, logits_to_labels(network(a.image)))
            one = a.sample(1)
            assert torch.equal(one.predictions, a.predictions[1:]) and torch.equal(one.image, a.image[1:])
            assert one.zero_grad_fraction == float(a.zero_grad_fractions[1])
    assert reusable_predictions(iterates, amp=False) == [a.predictions for a in iterates]
    assert reusable_predictions(iterates, amp=True) == [None] * 3  # the attack ran in fp32, scoring would not


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sweep": {"name": "i-FGSM"}}, r"sweep must be an FGSM spec"),
        ({"attacks": [{"name": "i-FGSM"}, {"name": "i-FGSM", "alpha": 0.01}]}, r"is configured twice"),
        ({"attacks": [3]}, r"attacks: each attack must be a spec"),
        ({"attacks": [{"name": "PGD", "norm": "l2", "epsilon": 0.5}]}, r"is an L2 attack; the attack lists are L-inf"),
        ({"attacks": [{"name": "APGD", "norm": "l2"}]}, r"is an L2 attack; the attack lists are L-inf"),
        ({"attacks": float("nan")}, r"attacks must be a list of attack specs or names, got nan"),
        ({"attacks": "FGSM"}, r"attacks must be a list of attack specs or names, got 'FGSM'"),
        ({"sweep_epsilons": "0.1"}, r"sweep_epsilons must be a list of numbers"),
        ({"sweep_epsilons": [0.1, float("nan")]}, r"sweep_epsilons: epsilon must be a finite number, got nan"),
        ({"sweep_epsilons": [0.1, True]}, r"sweep_epsilons: epsilon must be a finite number, got True"),
    ],
)
def test_bad_specs_raise(change, message):
    with pytest.raises(RobustsegError, match=message):
        _jobs(**change)


@pytest.mark.parametrize(("spec", "per_iteration"), [
    ({"name": "i-FGSM", "steps": 3}, True),
    ({"name": "PGD", "steps": 3}, False),
    ({"name": "PGD", "steps": 3, "restarts": 2}, False),
    ({"name": "APGD", "steps": 3}, False),
])  # fmt: skip
def test_best_iterate_attacks_are_scored_at_their_result(spec, per_iteration):
    """PGD and APGD return their best iterate, not their last: one row, the result's, never the search path's."""
    (job,) = build_jobs([spec], None, [], 0.05, "soft_dice")
    assert job.per_iteration is per_iteration
    torch.manual_seed(0)
    net = torch.nn.Conv3d(4, 4, 1)
    image = torch.rand(2, 4, 6, 6, 6)
    label = torch.zeros(2, 1, 6, 6, 6, dtype=torch.long)
    label[:, :, 2:4, 2:4, 2:4] = 2
    adversarials = job.run(net, image, label)
    assert [a.iteration for a in adversarials] == ([1, 2, 3] if per_iteration else [3])
    if not per_iteration:
        expected = make_attack(spec, epsilon=0.05, loss="soft_dice")(net, image, label)
        assert torch.equal(adversarials[0].image, expected)
    # the best-iterate attacks' convergence trace: one value per gradient pass, per sample, non-increasing
    trace = adversarials[-1].trace
    if per_iteration:
        assert trace is None
    else:
        restarts = spec.get("restarts", 1)
        assert trace is not None and tuple(trace.shape) == (2, 3 * restarts)
        assert bool((trace[:, 1:] <= trace[:, :-1]).all())
        assert torch.equal(adversarials[-1].sample(1).trace, trace[1:2])


@pytest.mark.parametrize("name", ["PGD", "APGD"])
@pytest.mark.parametrize("restarts", [1, 2])
def test_trace_is_the_running_best_of_the_scored_iterates(name, restarts):
    """Each record's best Dice is the lowest hard Dice of the iterates scored so far: at most its own pass's, and
    the result (which also scores the last iterate) is at most the trace's end."""
    torch.manual_seed(0)
    net = torch.nn.Conv3d(4, 4, 3, padding=1)
    image = torch.rand(2, 4, 8, 8, 8)
    label = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    label[:, :, 2:6, 2:6, 2:6] = 2
    label[:, :, 3:5, 3:5, 3:5] = 4
    records = []
    attack = make_attack({"name": name, "epsilon": 0.2, "steps": 4, "restarts": restarts, "loss": "ce"})
    result = attack(net, image, label, callback=records.append)
    assert len(records) == 4 * restarts
    best = torch.stack([r.best_dices for r in records])
    own = torch.stack([region_dice(r.predictions, label).mean(1) for r in records])
    assert bool((best[1:] <= best[:-1]).all()) and bool((best <= own + 1e-6).all())
    with torch.no_grad():
        final = region_dice(logits_to_labels(net(result)), label).mean(1)
    assert bool((final <= best[-1] + 1e-6).all())
    make_attack({"name": "i-FGSM", "epsilon": 0.2, "steps": 2})(net, image, label, callback=records.append)
    assert records[-1].best_dices is None  # only the best-iterate attacks trace


@pytest.mark.parametrize(
    ("name", "final_only", "kept"),
    [("APGD", False, 0), ("PGD", False, 0), ("i-FGSM", True, 0), ("i-FGSM", False, 4)],
)
def test_a_job_keeps_the_iterates_only_of_the_rows_it_writes(name, final_only, kept):
    """While it runs, a job holds the iterates of the steps only where each is a row (i-FGSM, not for transfer): a
    best-iterate attack's records are read for their zero-gradient fractions and best Dice, and holding every step's
    iterate would hold steps x the batch's images at the attack's end (14 GB for 100 steps of one BraTS volume)."""
    (job,) = build_jobs([{"name": name, "steps": 4}], None, [], 0.05, "soft_dice")
    attack = job.attacks[0]
    refs: list[weakref.ref] = []
    held: list[int] = []
    real_run = type(attack).run

    def run(model, clean, labels, threat, step_size, callback):
        def watched(step):
            refs.append(weakref.ref(step.adversarial))
            callback(step)

        result = real_run(attack, model, clean, labels, threat, step_size, watched)
        # the attack is done, the job has not returned: what is still alive is held by the job (or is the result)
        held.append(sum(1 for r in refs if r() is not None and r() is not result))
        return result

    attack.run = run  # type: ignore[method-assign]
    torch.manual_seed(0)
    net = torch.nn.Conv3d(4, 4, 1)
    image = torch.rand(2, 4, 6, 6, 6)
    label = torch.zeros(2, 1, 6, 6, 6, dtype=torch.long)
    label[:, :, 2:4, 2:4, 2:4] = 2
    adversarials = job.run(net, image, label, final_only=final_only)
    assert len(refs) == 4 and len(adversarials) == max(kept, 1)
    assert held == [kept - (1 if kept else 0)]  # a kept job's last iterate is also the attack's result
