"""Properties every attack shares (common/attacks/base.py): threat model, model and inputs left as found, options."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet

from common.attacks import FGSM, PGD, Attack, IterativeFGSM, TargetedIterativeFGSM
from common.errors import RobustsegError
from common.losses import SoftDiceLoss
from common.networks import SliceWise, UNet2D, UNet3D

ATTACKS = {
    "FGSM": lambda epsilon, **kw: FGSM(epsilon, **kw),
    "i-FGSM": lambda epsilon, **kw: IterativeFGSM(epsilon, steps=3, **kw),
    "ti-FGSM": lambda epsilon, **kw: TargetedIterativeFGSM(epsilon, steps=3, **kw),
    "PGD": lambda epsilon, **kw: PGD(epsilon, steps=3, **kw),
}
UNTARGETED = ["FGSM", "i-FGSM", "PGD"]
DIMS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def rescaled(tumours):
    """The test tumours with sample 1 on [0, 2] instead of [0, 1], so relative and absolute epsilon differ."""
    images, labels = tumours
    return images * torch.tensor([1.0, 2.0]).view(2, 1, 1, 1, 1), labels


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("relative", [True, False])
def test_perturbation_reaches_but_never_leaves_the_ball(name, relative, trained_net, rescaled):
    images, labels = rescaled
    epsilon = 0.1
    adv = ATTACKS[name](epsilon, relative=relative, clip=None)(trained_net, images, labels)
    radius = epsilon * images.abs().amax(DIMS) if relative else torch.full((2,), epsilon)
    distance = (adv - images).abs().amax(DIMS)
    torch.testing.assert_close(distance, radius)  # per sample: on the sphere somewhere, never beyond


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("clip", ["sample", (0.0, 2.0), None])
def test_result_stays_in_the_valid_range(name, clip, trained_net, rescaled):
    images, labels = rescaled
    adv = ATTACKS[name](0.3, clip=clip)(trained_net, images, labels)
    assert ((adv - images).abs() <= 0.3 * images.abs().amax(DIMS, keepdim=True) * (1 + 1e-6)).all()
    lo, hi = images.amin(DIMS, keepdim=True), images.amax(DIMS, keepdim=True)
    if clip == "sample":
        assert (adv >= lo).all() and (adv <= hi).all()
    elif clip is not None:
        assert adv.min() >= clip[0] and adv.max() <= clip[1]
        assert adv.min() == clip[0]  # the bound was reached, so it is what held the attack back
    else:
        assert ((adv < lo) | (adv > hi)).any()  # without clipping the range is left: the checks above can fail


@pytest.mark.parametrize("name", ATTACKS)
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

    adv = ATTACKS[name](0.05)(net, images, labels)

    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # parameters and BatchNorm statistics
    assert all((g is None and p.grad is None) or torch.equal(p.grad, g) for p, g in zip(params, grads, strict=True))
    assert [p.requires_grad for p in params] == flags
    assert [m.training for m in net.modules()] == modes
    assert torch.equal(images, images_before) and torch.equal(labels, labels_before)
    # it ran in eval mode: dropout 0.5 and batch statistics would otherwise change the result
    assert torch.equal(adv, ATTACKS[name](0.05)(net.eval(), images, labels))


def test_restores_model_modes_when_the_attack_fails(make_net, tumours):
    net = make_net(norm=True).train()

    def fail(record):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        IterativeFGSM(0.05, steps=2)(net, *tumours, callback=fail)
    assert all(m.training for m in net.modules())


@pytest.mark.parametrize("name", ATTACKS)
def test_same_result_twice_and_under_no_grad(name, trained_net, tumours):
    attack = ATTACKS[name](0.05)
    adv = attack(trained_net, *tumours)
    with torch.no_grad():
        adv_no_grad = attack(trained_net, *tumours)
    assert torch.equal(adv, attack(trained_net, *tumours))
    assert torch.equal(adv, adv_no_grad)
    assert not adv.requires_grad and adv.shape == tumours[0].shape and adv.dtype == tumours[0].dtype


@pytest.mark.parametrize("name", UNTARGETED)
@pytest.mark.parametrize("loss", ["soft_dice", "ce"])
def test_untargeted_attacks_increase_the_loss(name, loss, trained_net, tumours, loss_of):
    adv = ATTACKS[name](0.05, loss=loss)(trained_net, *tumours)
    assert loss_of(trained_net, adv, tumours[1], loss) > loss_of(trained_net, *tumours, loss)


def test_callable_loss_is_used(trained_net, tumours):
    soft_dice = SoftDiceLoss()
    adv = FGSM(0.05, loss=lambda logits, labels: soft_dice(logits, labels))(trained_net, *tumours)
    assert torch.equal(adv, FGSM(0.05)(trained_net, *tumours))
    assert not torch.equal(adv, FGSM(0.05, loss=lambda logits, labels: logits[:, 1].mean())(trained_net, *tumours))


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("option", [{"temperature": 1024.0}, {"logit_scale": 1 / 1024}])
def test_temperature_undoes_saturated_logits(name, option, trained_net, tumours, scaled, loss_of):
    """A distilled student at T = 1 (logits x 1024) masks the gradient; the adaptive attack sees through it.

    1024 is a power of two, so dividing the logits by it is exact and the adaptive attack must match the attack on
    the plain network bit for bit.
    """
    student = scaled(trained_net, 1024.0)
    naive, adaptive, plain = [], [], []
    adv_naive = ATTACKS[name](0.05)(student, *tumours, callback=naive.append)
    adv_adaptive = ATTACKS[name](0.05, **option)(student, *tumours, callback=adaptive.append)
    adv_plain = ATTACKS[name](0.05)(trained_net, *tumours, callback=plain.append)
    assert naive[0].zero_grad_fraction > 0.5 > 0.1 > adaptive[0].zero_grad_fraction
    assert torch.equal(adv_adaptive, adv_plain)
    assert [r.zero_grad_fraction for r in adaptive] == [r.zero_grad_fraction for r in plain]
    if name in UNTARGETED:
        assert loss_of(trained_net, adv_adaptive, tumours[1]) > loss_of(trained_net, adv_naive, tumours[1])


@pytest.mark.parametrize("name", ["FGSM", "i-FGSM"])
def test_sliding_window_gradient_reaches_every_window(name, make_net, tumours):
    net = make_net()
    inferer = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=4, overlap=0.0)
    images, labels = tumours
    adv = ATTACKS[name](0.05, relative=False, clip=None, inferer=inferer)(net, images, labels)
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
    ("cls", "name"), [(FGSM, "FGSM"), (IterativeFGSM, "i-FGSM"), (TargetedIterativeFGSM, "ti-FGSM"), (PGD, "PGD")]
)
def test_name_and_repr_list_the_settings(cls, name):
    attack = cls(0.05, loss="ce", relative=False, clip=(0, 1), temperature=2.0)
    assert cls.name == name
    text = repr(attack)
    assert text.startswith(f"{cls.__name__}(epsilon=0.05, ")
    for setting in ["loss='ce'", "relative=False", "clip=(0.0, 1.0)", "temperature=2.0", "amp=False"]:
        assert setting in text
    assert ("steps=" in text) == (cls is not FGSM)


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
        ({"loss": "dice"}, r"loss must be one of \['ce', 'soft_dice'\] or a callable"),
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


def test_inference_mode_is_refused_but_its_tensors_are_accepted(trained_net, tumours):
    with torch.inference_mode():
        images, labels = tumours[0].clone(), tumours[1].clone()
        with pytest.raises(RobustsegError, match=r"FGSM needs input gradients: call it outside torch.inference_mode"):
            FGSM(0.05)(trained_net, images, labels)
    assert torch.equal(FGSM(0.05)(trained_net, images, labels), FGSM(0.05)(trained_net, *tumours))


def test_base_class_has_no_update_rule(trained_net, tumours):
    with pytest.raises(NotImplementedError):
        Attack(0.05)(trained_net, *tumours)
