"""Properties every attack shares (common/attacks/base.py): threat model, model and inputs left as found, options.

The shared contract runs for every attack of the registry (``common.attacks.ATTACKS``), built with
``make_attack`` and the settings of ``CONTRACT_SETTINGS`` (conftest.py): a new registry entry is checked without
editing this file.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet

from common.attacks import ATTACKS, FGSM, Attack, IterativeFGSM, RandomSign
from common.errors import RobustsegError
from common.losses import SoftDiceLoss
from common.networks import SliceWise, UNet2D, UNet3D

from .conftest import (
    CONTRACT_SETTINGS,
    GRADIENT_FREE,
    TARGETED,
    build_attack,
    build_l2_attack,
    l2_distance,
    registered_attacks,
)
from .nudge_plugin import Nudge

DIMS = (1, 2, 3, 4)
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", registered_attacks())
def test_every_registered_attack_can_be_built(name):
    try:
        attack = build_attack(name, 0.05)
    except RobustsegError as exc:
        pytest.fail(f"registry entry {name!r} cannot be built for the contract tests ({exc}); add its settings to "
                    "CONTRACT_SETTINGS in tests/attacks/conftest.py")
    assert type(attack) is ATTACKS[name] and attack.epsilon == 0.05


def test_an_entry_that_needs_more_than_epsilon_is_reported(monkeypatch):
    class NeedsTarget(Nudge):
        name = "needs-target"

        def __init__(self, epsilon, target_model, **kwargs):
            super().__init__(epsilon, **kwargs)

    monkeypatch.setitem(ATTACKS, NeedsTarget.name, NeedsTarget)
    with pytest.raises(RobustsegError, match=r"attack needs-target: missing setting\(s\) \['target_model'\]"):
        build_attack(NeedsTarget.name, 0.05)
    monkeypatch.setitem(CONTRACT_SETTINGS, NeedsTarget.name, {"target_model": None})
    assert type(build_attack(NeedsTarget.name, 0.05)) is NeedsTarget


def test_a_new_registry_entry_joins_the_contract(monkeypatch):
    monkeypatch.setitem(ATTACKS, Nudge.name, Nudge)
    assert Nudge.name in registered_attacks()
    assert type(build_attack(Nudge.name, 0.05)) is Nudge


@pytest.mark.slow
def test_a_new_registry_entry_is_collected_and_passes_the_contract(tmp_path):
    """A pytest run with one more attack registered before collection runs every contract test for it too."""
    path = [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}  # nudge_plugin.py is importable as a plugin
    report = tmp_path / "report.xml"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "nudge_plugin", "-k", "nudge or PGD", f"--junitxml={report}",
         __file__],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    passed = {case.get("name") for case in ElementTree.parse(report).iter("testcase") if not len(case)}
    # "PGD" is a whole token of no other name: every test parametrized by the registry has a PGD case
    by_registry = {test for test in passed if re.search(r"[\[-]PGD[\]-]", test)}
    assert len(by_registry) >= 10
    assert {re.sub(r"(?<=[\[-])PGD(?=[\]-])", "nudge", test) for test in by_registry} <= passed


@pytest.fixture(scope="module")
def rescaled(tumours):
    """The test tumours with sample 1 on [0, 2] instead of [0, 1], so relative and absolute epsilon differ."""
    images, labels = tumours
    return images * torch.tensor([1.0, 2.0]).view(2, 1, 1, 1, 1), labels


@pytest.mark.parametrize("name", registered_attacks())
@pytest.mark.parametrize("relative", [True, False])
def test_perturbation_reaches_but_never_leaves_the_ball(name, relative, trained_net, rescaled):
    images, labels = rescaled
    epsilon = 0.1
    records = []
    adv = build_attack(name, epsilon, relative=relative, clip=None)(trained_net, images, labels, records.append)
    radius = epsilon * images.abs().amax(DIMS) if relative else torch.full((2,), epsilon)
    distance = (adv - images).abs().amax(DIMS)
    torch.testing.assert_close(distance, radius)  # per sample: on the sphere somewhere, never beyond
    assert records and all(((r.adversarial - images).abs().amax(DIMS) <= radius * (1 + 1e-6)).all() for r in records)


@pytest.mark.parametrize("name", registered_attacks())
@pytest.mark.parametrize("clip", ["sample", (0.0, 2.0), None])
def test_result_stays_in_the_valid_range(name, clip, trained_net, rescaled):
    images, labels = rescaled
    adv = build_attack(name, 0.3, clip=clip)(trained_net, images, labels)
    assert ((adv - images).abs() <= 0.3 * images.abs().amax(DIMS, keepdim=True) * (1 + 1e-6)).all()
    lo, hi = images.amin(DIMS, keepdim=True), images.amax(DIMS, keepdim=True)
    if clip == "sample":
        assert (adv >= lo).all() and (adv <= hi).all()
    elif clip is not None:
        assert adv.min() >= clip[0] and adv.max() <= clip[1]
        assert adv.min() == clip[0]  # the bound was reached, so it is what held the attack back
    else:
        assert ((adv < lo) | (adv > hi)).any()  # without clipping the range is left: the checks above can fail


@pytest.mark.parametrize("name", registered_attacks())
def test_leaves_model_and_inputs_exactly_as_found(name, make_net, tumours):
    net = make_net(norm=True, dropout=0.5).train()
    net[2].eval()  # mixed modes must come back module by module
    params = list(net.parameters())
    params[0].requires_grad_(False)
    for p in params[1:-1]:
        p.grad = torch.randn_like(p)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    flags = [p.requires_grad for p in params]
    modes = [m.training for m in net.modules()]
    images, labels = tumours
    images_before, labels_before = images.clone(), labels.clone()

    adv = build_attack(name, 0.05)(net, images, labels)

    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # parameters and BatchNorm statistics
    assert all((g is None and p.grad is None) or torch.equal(p.grad, g) for p, g in zip(params, grads, strict=True))
    assert [p.requires_grad for p in params] == flags
    assert [m.training for m in net.modules()] == modes
    assert torch.equal(images, images_before) and torch.equal(labels, labels_before)
    # it ran in eval mode: dropout 0.5 and batch statistics would otherwise change the result
    assert torch.equal(adv, build_attack(name, 0.05)(net.eval(), images, labels))


def test_restores_model_modes_when_the_attack_fails(make_net, tumours):
    net = make_net(norm=True).train()

    def fail(record):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        IterativeFGSM(0.05, steps=2)(net, *tumours, callback=fail)
    assert all(m.training for m in net.modules())


@pytest.mark.parametrize("name", registered_attacks())
def test_same_result_twice_and_under_no_grad(name, trained_net, tumours):
    attack = build_attack(name, 0.05)
    adv = attack(trained_net, *tumours)
    with torch.no_grad():
        adv_no_grad = attack(trained_net, *tumours)
    assert torch.equal(adv, attack(trained_net, *tumours))
    assert torch.equal(adv, adv_no_grad)
    assert not adv.requires_grad and adv.shape == tumours[0].shape and adv.dtype == tumours[0].dtype


@pytest.mark.parametrize("name", registered_attacks())
def test_same_settings_same_result_whatever_the_global_seed(name, trained_net, tumours):
    """Randomness (PGD's start) comes from the attack's own seed: the global RNG is neither read nor advanced."""
    results = []
    with torch.random.fork_rng(devices=[]):
        for seed in (0, 1):
            torch.manual_seed(seed)
            rng = torch.get_rng_state()
            results.append(build_attack(name, 0.05)(trained_net, *tumours))
            assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(*results)


@pytest.mark.parametrize("name", registered_attacks())
@pytest.mark.parametrize("loss", ["soft_dice", "ce"])
def test_attack_loss_moves_the_intended_way(name, loss, trained_net, tumours, loss_of):
    """Untargeted attacks increase the loss against the labels; targeted ones decrease it towards their target."""
    images, labels = tumours
    attack = build_attack(name, 0.05, loss=loss)
    adv = attack(trained_net, images, labels)
    aim = attack.loss_labels(labels)  # the labels themselves, or the target map
    before, after = loss_of(trained_net, images, aim, loss), loss_of(trained_net, adv, aim, loss)
    assert after < before if name in TARGETED else after > before


@pytest.mark.parametrize("name", registered_attacks())
def test_targeted_attacks_are_declared(name, tumours):
    """TARGETED (conftest.py) lists exactly the attacks whose loss aims at other labels than the ground truth."""
    labels = tumours[1]
    assert (not torch.equal(build_attack(name, 0.05).loss_labels(labels), labels)) == (name in TARGETED)


# -- the same contract in the L2 threat model (norm="l2"): every registry entry meets it or refuses "l2" in one line

L2_EPSILON = 1.0
"""The contract's L2 radius (relative): on a 4 x 16^3 volume on [0, 1] the corner of the paper's L-inf ball (0.05) is
at L2 distance 6.4; this radius already lowers the trained net's hard Dice from about 0.9 to 0.4-0.65."""


@pytest.mark.parametrize("name", registered_attacks())
@pytest.mark.parametrize("relative", [True, False])
def test_l2_perturbation_uses_but_never_leaves_the_ball(name, relative, trained_net, rescaled):
    attack = build_l2_attack(name, L2_EPSILON, relative=relative, clip=None)
    if attack is None:
        return
    images, labels = rescaled
    records = []
    adv = attack(trained_net, images, labels, records.append)
    radius = L2_EPSILON * images.abs().amax(DIMS) if relative else torch.full((2,), L2_EPSILON)
    distance = l2_distance(adv, images)
    assert (distance <= radius * (1 + 1e-6)).all()
    assert (distance > 0.9 * radius).all()  # per sample: the budget is used (without a range, near the sphere)
    assert records and all((l2_distance(r.adversarial, images) <= radius * (1 + 1e-6)).all() for r in records)


@pytest.mark.parametrize("name", registered_attacks())
@pytest.mark.parametrize("clip", ["sample", (0.0, 2.0), None])
def test_l2_result_stays_in_the_valid_range(name, clip, trained_net, rescaled):
    """A radius of 10 (a sixth of the volume's L2 extent) pushes voxels against the range: the clamp after the L2
    projection keeps them in it, and the result stays in the ball."""
    attack = build_l2_attack(name, 10.0, clip=clip)
    if attack is None:
        return
    images, labels = rescaled
    adv = attack(trained_net, images, labels)
    assert (l2_distance(adv, images) <= 10.0 * images.abs().amax(DIMS) * (1 + 1e-6)).all()
    lo, hi = images.amin(DIMS, keepdim=True), images.amax(DIMS, keepdim=True)
    if clip == "sample":
        assert (adv >= lo).all() and (adv <= hi).all()
    elif clip is not None:
        assert adv.min() >= clip[0] and adv.max() <= clip[1]
        assert adv.min() == clip[0]  # the bound was reached, so it is what held the attack back
    else:
        assert ((adv < lo) | (adv > hi)).any()  # without clipping the range is left: the checks above can fail


@pytest.mark.parametrize("name", registered_attacks())
def test_l2_leaves_model_and_inputs_exactly_as_found(name, make_net, tumours):
    if build_l2_attack(name, L2_EPSILON) is None:
        return
    net = make_net(norm=True, dropout=0.5).train()
    net[2].eval()
    params = list(net.parameters())
    for p in params[1:]:
        p.grad = torch.randn_like(p)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    grads = [p.grad.clone() for p in params[1:]]
    modes = [m.training for m in net.modules()]
    images, labels = tumours
    images_before, labels_before = images.clone(), labels.clone()

    adv = build_l2_attack(name, L2_EPSILON)(net, images, labels)

    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert params[0].grad is None and all(torch.equal(p.grad, g) for p, g in zip(params[1:], grads, strict=True))
    assert [m.training for m in net.modules()] == modes
    assert torch.equal(images, images_before) and torch.equal(labels, labels_before)
    assert torch.equal(adv, build_l2_attack(name, L2_EPSILON)(net.eval(), images, labels))


@pytest.mark.parametrize("name", registered_attacks())
def test_l2_same_result_twice_under_no_grad_and_whatever_the_global_seed(name, trained_net, tumours):
    attack = build_l2_attack(name, L2_EPSILON)
    if attack is None:
        return
    adv = attack(trained_net, *tumours)
    with torch.no_grad():
        assert torch.equal(adv, attack(trained_net, *tumours))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        rng = torch.get_rng_state()
        assert torch.equal(adv, build_l2_attack(name, L2_EPSILON)(trained_net, *tumours))
        assert torch.equal(torch.get_rng_state(), rng)
    assert not adv.requires_grad and adv.shape == tumours[0].shape and adv.dtype == tumours[0].dtype


@pytest.mark.parametrize("name", registered_attacks())
@pytest.mark.parametrize("loss", ["soft_dice", "ce"])
def test_l2_attack_loss_moves_the_intended_way(name, loss, trained_net, tumours, loss_of):
    attack = build_l2_attack(name, L2_EPSILON, loss=loss)
    if attack is None:
        return
    images, labels = tumours
    adv = attack(trained_net, images, labels)
    aim = attack.loss_labels(labels)
    before, after = loss_of(trained_net, images, aim, loss), loss_of(trained_net, adv, aim, loss)
    assert after < before if name in TARGETED else after > before


def test_callable_loss_is_used(trained_net, tumours):
    soft_dice = SoftDiceLoss()
    adv = FGSM(0.05, loss=lambda logits, labels: soft_dice(logits, labels))(trained_net, *tumours)
    assert torch.equal(adv, FGSM(0.05)(trained_net, *tumours))
    assert not torch.equal(adv, FGSM(0.05, loss=lambda logits, labels: logits[:, 1].mean())(trained_net, *tumours))


@pytest.mark.parametrize("name", registered_attacks())
@pytest.mark.parametrize("option", [{"temperature": 1024.0}, {"logit_scale": 1 / 1024}])
def test_temperature_undoes_saturated_logits(name, option, trained_net, tumours, scaled, loss_of):
    """A distilled student at T = 1 (logits x 1024) masks the gradient; the adaptive attack sees through it.

    1024 is a power of two, so dividing the logits by it is exact and the adaptive attack must match the attack on
    the plain network bit for bit.
    """
    student = scaled(trained_net, 1024.0)
    if name in GRADIENT_FREE:  # no gradient to mask: the temperature changes nothing
        adaptive_noise = build_attack(name, 0.05, **option)(student, *tumours)
        assert torch.equal(adaptive_noise, build_attack(name, 0.05)(student, *tumours))
        return
    naive, adaptive, plain = [], [], []
    adv_naive = build_attack(name, 0.05)(student, *tumours, callback=naive.append)
    adv_adaptive = build_attack(name, 0.05, **option)(student, *tumours, callback=adaptive.append)
    adv_plain = build_attack(name, 0.05)(trained_net, *tumours, callback=plain.append)
    assert naive[0].zero_grad_fraction > 0.5 > 0.1 > adaptive[0].zero_grad_fraction
    assert torch.equal(adv_adaptive, adv_plain)
    assert [r.zero_grad_fraction for r in adaptive] == [r.zero_grad_fraction for r in plain]
    aim = build_attack(name, 0.05).loss_labels(tumours[1])
    adaptive_loss, naive_loss = loss_of(trained_net, adv_adaptive, aim), loss_of(trained_net, adv_naive, aim)
    assert adaptive_loss < naive_loss if name in TARGETED else adaptive_loss > naive_loss


@pytest.mark.parametrize("name", ["FGSM", "i-FGSM"])
def test_sliding_window_gradient_reaches_every_window(name, make_net, tumours):
    net = make_net()
    inferer = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=4, overlap=0.0)
    images, labels = tumours
    adv = build_attack(name, 0.05, relative=False, clip=None, inferer=inferer)(net, images, labels)
    moved = adv != images  # with no clipping, a voxel moves exactly where its gradient is non-zero
    windows = moved.unfold(2, 8, 8).unfold(3, 8, 8).unfold(4, 8, 8)  # (B, C, 2, 2, 2, 8, 8, 8)
    assert windows.flatten(-3).any(-1).any(1).all()
    loss = SoftDiceLoss()
    with torch.no_grad():
        assert loss(inferer(adv, net), labels) > loss(inferer(images, net), labels)


NETWORKS = {
    "monai UNet": lambda: UNet(spatial_dims=3, in_channels=4, out_channels=4, channels=(4, 8, 16), strides=(2, 2)),
    "UNet3D": lambda: UNet3D(base_filters=4, levels=3, segmentation_levels=2),
    "SliceWise(UNet2D)": lambda: SliceWise(UNet2D(base_filters=4, levels=3, segmentation_levels=2)),
}


@pytest.mark.parametrize("kind", NETWORKS)
def test_segmentation_networks(kind, tumours, loss_of):
    """3D nets and a 2D net run slice by slice: the whole volume is attacked, dropout stays off, modes come back."""
    torch.manual_seed(0)
    net = NETWORKS[kind]().train()
    images, labels = tumours
    adv = IterativeFGSM(0.05, steps=2, relative=False, clip=None)(net, images, labels)
    assert all(m.training for m in net.modules())
    moved = adv != images
    assert moved.any(dim=(0, 1, 2, 3)).all()  # every axial slice is perturbed
    net.eval()
    assert torch.equal(adv, IterativeFGSM(0.05, steps=2, relative=False, clip=None)(net, images, labels))
    assert loss_of(net, adv, labels) > loss_of(net, images, labels)


def test_amp_gradient_sign_mostly_agrees_with_fp32(trained_net, tumours):
    images = tumours[0]
    adv32 = FGSM(0.05)(trained_net, *tumours)
    adv16 = FGSM(0.05, amp=True)(trained_net, *tumours)
    assert ((adv16 - images).abs() <= 0.05 * images.abs().amax(DIMS, keepdim=True) * (1 + 1e-6)).all()
    moved = adv32 != images
    agreement = ((adv16 - images).sign() == (adv32 - images).sign())[moved].float().mean()
    assert agreement > 0.8


@pytest.mark.parametrize(
    ("amp", "on", "dtype", "listed"),
    [(False, False, torch.bfloat16, "amp=False"), ("fp32", False, torch.bfloat16, "amp=False"),
     (True, True, torch.bfloat16, "amp=True"), ("bf16", True, torch.bfloat16, "amp=True"),
     ("fp16", True, torch.float16, "amp=True, amp_dtype='fp16'")],
)  # fmt: skip
def test_amp_settings_name_the_autocast_dtype(amp, on, dtype, listed):
    """A precision name gives the same attack (and ``repr``, the CSV's attack_config) as the boolean it stands for."""
    attack = IterativeFGSM(0.05, amp=amp)
    assert (attack.amp, attack.amp_dtype) == (on, dtype)
    assert listed in repr(attack) and ("amp_dtype" in repr(attack)) == (dtype == torch.float16)


@pytest.mark.parametrize("amp", ["fp64", 1, None])
def test_bad_amp_setting_raises(amp):
    with pytest.raises(RobustsegError, match=r"amp must be False, True, 'fp32', 'bf16' or 'fp16', got"):
        IterativeFGSM(0.05, amp=amp)


@pytest.mark.parametrize("inferer", [5, "SlidingWindowInferer"])
def test_an_inferer_that_cannot_be_called_raises(inferer):
    with pytest.raises(RobustsegError, match=r"inferer must be None or a MONAI inferer \(a callable\), got"):
        IterativeFGSM(0.05, inferer=inferer)


@pytest.mark.parametrize("relative", ["false", 0, None])
def test_relative_must_be_a_boolean(relative):
    with pytest.raises(RobustsegError, match=r"relative must be True or False"):
        IterativeFGSM(0.05, relative=relative)


@pytest.mark.parametrize("name", registered_attacks())
def test_name_and_repr_list_the_settings(name):
    cls = ATTACKS[name]
    attack = build_attack(name, 0.05, loss="ce", relative=False, clip=(0, 1), temperature=2.0)
    assert cls.name == name
    text = repr(attack)
    assert text.startswith(f"{cls.__name__}(epsilon=0.05, ")
    for setting in ["loss='ce'", "relative=False", "clip=(0.0, 1.0)", "temperature=2.0", "amp=False"]:
        assert setting in text
    # an attack lists steps where its constructor takes them: FGSM is one step of size epsilon by definition
    assert ("steps=" in text) == ("steps" in inspect.signature(cls).parameters)
    assert ("steps=" in text) == (cls not in (FGSM, RandomSign))


def test_repr_names_callable_loss_and_inferer():
    def my_loss(logits, labels):
        return logits.mean()

    text = repr(IterativeFGSM(0.05, loss=my_loss, inferer=SlidingWindowInferer(roi_size=(8, 8, 8))))
    assert "loss=my_loss" in text and "inferer=SlidingWindowInferer(roi_size=(8, 8, 8))" in text
    assert "alpha=0.005" in text and "steps=10" in text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": -0.1}, r"epsilon must be >= 0, got -0.1"),
        ({"epsilon": 1.5}, r"epsilon must be <= 1 with relative=True"),
        ({"epsilon": float("nan")}, r"epsilon must be a finite number"),
        ({"steps": 0}, r"steps must be an integer >= 1, got 0"),
        ({"steps": 2.5}, r"steps must be an integer >= 1, got 2.5"),
        ({"alpha": 0.0}, r"alpha must be a finite number > 0, got 0.0"),
        ({"loss": "dice"}, r"loss must be one of \['balanced_ce', 'ce', 'cospgd', 'js', 'masked_ce', 'segpgd', "
         r"'soft_dice'\] or a callable"),
        ({"loss": 3}, r"loss must be one of .* got 3"),
        ({"clip": "range"}, r"clip must be 'sample', None or a pair"),
        ({"clip": (0.0,)}, r"clip must be 'sample', None or a pair"),
        ({"clip": (1.0, 0.0)}, r"clip must be a pair \(lo, hi\) of finite numbers with lo < hi"),
        ({"temperature": 0.0}, r"temperature must be a finite number > 0"),
        ({"logit_scale": -1.0}, r"logit_scale must be a finite number > 0"),
        ({"temperature": 2.0, "logit_scale": 0.5}, r"give temperature or logit_scale, not both"),
    ],
)
def test_bad_settings_are_refused_in_one_line(kwargs, match):
    kwargs = {"epsilon": 0.05, **kwargs}
    with pytest.raises(RobustsegError, match=match) as info:
        IterativeFGSM(**kwargs)
    assert "\n" not in str(info.value)


def test_absolute_epsilon_may_exceed_one():
    assert IterativeFGSM(5.0, relative=False).epsilon == 5.0


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (torch.zeros(1, 4, 4, 4, 4, dtype=torch.long), torch.zeros(1, 1, 4, 4, 4), r"images must be a floating-point"),
        (torch.zeros(4, 4), torch.zeros(4, 4), r"images must be a floating-point tensor \(B, C, \*spatial\)"),
        (torch.zeros(1, 4, 4, 4, 4), torch.zeros(1, 4, 4, 4, 4), r"labels: shape \(1, 4, 4, 4, 4\) does not fit"),
        (torch.zeros(2, 4, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4), r"expected \(2, 1, 4, 4, 4\)"),
        (torch.zeros(1, 4, 4, 4, 4), torch.full((1, 1, 4, 4, 4), 3), r"labels: values \[3\] are not BraTS labels"),
    ],
)
def test_bad_inputs_are_refused_in_one_line(images, labels, match, make_net):
    with pytest.raises(RobustsegError, match=match) as info:
        FGSM(0.05)(make_net(), images, labels)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", registered_attacks())
def test_inference_mode_is_refused_but_its_tensors_are_accepted(name, trained_net, tumours):
    attack = build_attack(name, 0.05)
    with torch.inference_mode():
        images, labels = tumours[0].clone(), tumours[1].clone()
        message = rf"{type(attack).__name__} needs input gradients: call it outside torch.inference_mode"
        with pytest.raises(RobustsegError, match=message):
            attack(trained_net, images, labels)
    assert torch.equal(attack(trained_net, images, labels), attack(trained_net, *tumours))


def test_base_class_has_no_update_rule(trained_net, tumours):
    with pytest.raises(NotImplementedError):
        Attack(0.05)(trained_net, *tumours)
