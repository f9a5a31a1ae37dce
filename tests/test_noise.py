"""Noise modules (spec §4): Learn2Perturb perturbation injection and PNI weight noise, placement, the switch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustlab.models import build_model
from robustlab.models.layers import ModelConfigError
from robustlab.models.noise import (InjectAfter, PerturbationInjection, PNILinear, alpha_parameters,
                                    insert_weight_noise, noise_enabled, noise_modules, theta_parameters)

SMALL_RESNET = dict(base="resnet_v1", base_options={"depth": 8, "width": 0.25})


def noisy(in_shape=(3, 16, 16), **options):
    return build_model("noisy", in_shape=in_shape, num_classes=10, **{**SMALL_RESNET, **options})


def test_theta_starts_at_theta0_with_feature_map_shapes_at_the_spec_placements():
    model = noisy()
    names = [n for n, m in model.named_modules() if isinstance(m, PerturbationInjection)]
    # stem conv+BN, then after each of the three residual additions (ResNet-8: one block per stage)
    assert names == ["stem.inject", "layer1.0.inject", "layer2.0.inject", "layer3.0.inject"]
    assert [tuple(t.shape) for t in theta_parameters(model)] == [(4, 16, 16), (4, 16, 16), (8, 8, 8), (16, 4, 4)]
    assert all(torch.all(t == 0.25) for t in theta_parameters(model))
    assert len(theta_parameters(noisy(in_shape=(3, 8, 8), base_options={"depth": 20, "width": 0.25}))) == 10
    resnet18 = build_model("noisy", in_shape=(3, 8, 8), num_classes=10, base="resnet_v2_18",
                           base_options={"width": 0.0625}, theta0=0.1)
    assert len(theta_parameters(resnet18)) == 9
    assert theta_parameters(resnet18)[0].detach().mean().item() == pytest.approx(0.1)


def test_noise_is_on_in_eval_mode_and_absent_when_switched_off():
    torch.manual_seed(0)
    plain = build_model("resnet_v1", in_shape=(3, 16, 16), num_classes=10, depth=8, width=0.25).eval()
    torch.manual_seed(0)
    model = noisy().eval()  # same weights as ``plain`` (θ is not drawn at random)
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))  # eval mode: still random
        with noise_enabled(model, False):
            assert torch.equal(model(x), model(x))
            assert torch.allclose(model(x), plain(x), atol=1e-6)  # off = the model without noise
        assert not torch.allclose(model(x), model(x))  # restored on exit
        noise_enabled(model, False)  # as a plain call the switch stays
        assert torch.allclose(model(x), plain(x), atol=1e-6)
        assert not any(m.noise_on for m in noise_modules(model))


def test_per_sample_draws_by_default_and_one_shared_draw_as_an_option():
    x = torch.zeros(64, 2, 3, 3)
    per_sample = PerturbationInjection((2, 3, 3), theta0=0.5)(x)
    shared = PerturbationInjection((2, 3, 3), theta0=0.5, shared_draw=True)(x)
    assert torch.all(shared == shared[:1])  # one ε for the whole batch
    assert per_sample.std(0).min() > 0.2  # each example its own ε
    # out − x = θ·ε with ε ~ N(0, 1): the standard deviation is θ
    assert per_sample.std().item() == pytest.approx(0.5, rel=0.1)
    assert per_sample.mean().abs().item() < 0.1


def test_theta_gradient_is_the_noise_draw():
    module = PerturbationInjection((3,), theta0=0.7)
    x = torch.randn(5, 3)
    torch.manual_seed(3)
    out = module(x)
    out.sum().backward()
    eps = (out.detach() - x) / 0.7
    assert torch.allclose(module.theta.grad, eps.sum(0), atol=1e-5)


def test_placement_on_mnist_models():
    lenet = build_model("noisy", in_shape=(1, 28, 28), num_classes=10, base="lenet5")  # auto = after each conv
    assert [tuple(t.shape) for t in theta_parameters(lenet)] == [(32, 24, 24), (64, 8, 8)]
    assert isinstance(lenet.conv[0], InjectAfter) and isinstance(lenet.conv[0].layer, torch.nn.Conv2d)
    act = build_model("noisy", in_shape=(1, 28, 28), num_classes=10, base="lenet5", placement="activation")
    assert isinstance(act.conv[1], InjectAfter) and isinstance(act.conv[1].layer, torch.nn.ReLU)
    named = build_model("noisy", in_shape=(1, 28, 28), num_classes=10, base="lenet5", layers=["fc1"])
    assert [tuple(t.shape) for t in theta_parameters(named)] == [(512,)]
    assert named(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ModelConfigError, match="not a submodule"):
        build_model("noisy", in_shape=(1, 28, 28), num_classes=10, base="lenet5", layers=["fc9"])
    with pytest.raises(ModelConfigError, match="no 'inject' placeholders"):
        build_model("noisy", in_shape=(1, 28, 28), num_classes=10, base="lenet5", placement="inject")
    with pytest.raises(ModelConfigError, match="noise must be one of"):
        build_model("noisy", in_shape=(1, 28, 28), num_classes=10, base="lenet5", noise="gauss")
    with pytest.raises(ModelConfigError, match="theta0"):
        build_model("noisy", in_shape=(1, 28, 28), num_classes=10, base="lenet5", theta0=0.0)


def test_pni_noise_scale_follows_alpha_and_std_of_w():
    torch.manual_seed(0)
    layer = torch.nn.Linear(300, 200)
    model = torch.nn.Sequential(layer)
    insert_weight_noise(model, mode="channel", alpha0=0.5)
    pni = model[0]
    assert isinstance(pni, PNILinear) and pni.weight is layer.weight and pni.alpha.shape == (200, 1)
    with torch.no_grad():
        pni.alpha[:100] = 0.0
        eye = torch.eye(300)
        delta = (pni(eye) - F.linear(eye, pni.weight, pni.bias)).T  # = α·η, one row per output channel
    w_std = pni.weight.std().item()
    assert torch.all(delta[:100] == 0)
    assert delta[100:].std().item() == pytest.approx(0.5 * w_std, rel=0.05)
    element = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3))
    insert_weight_noise(element, mode="element")
    assert element[0].alpha.shape == element[0].weight.shape
    with pytest.raises(ModelConfigError, match="PNI mode"):
        insert_weight_noise(torch.nn.Sequential(torch.nn.Linear(2, 2)), mode="row")


def test_pni_noise_has_no_gradient_path_to_w_and_alpha_gets_one():
    torch.manual_seed(1)
    model = build_model("noisy", in_shape=(1, 28, 28), num_classes=10, base="lenet5", noise="pni")
    assert len(alpha_parameters(model)) == 4 and all(a.shape == (1,) for a in alpha_parameters(model))
    fc = model.fc2
    h = torch.randn(8, 512)
    fc(h).sum().backward()  # linear in W̃: the W gradient must equal the noise-free one
    grad_noisy = fc.weight.grad.clone()
    assert fc.alpha.grad is not None and fc.alpha.grad.abs().item() > 0
    fc.weight.grad = None
    with noise_enabled(model, False):
        fc(h).sum().backward()
    assert torch.allclose(grad_noisy, fc.weight.grad)
    x = torch.rand(3, 1, 28, 28)
    model.eval()
    assert not torch.allclose(model(x), model(x))


def test_noisy_model_state_dict_round_trip():
    torch.manual_seed(0)
    model = noisy(shared_draw=True)
    with torch.no_grad():
        for t in theta_parameters(model):
            t.uniform_(0.01, 1.0)
    copy = noisy(shared_draw=True)
    copy.load_state_dict(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(theta_parameters(model), theta_parameters(copy)))
    assert "stem.inject.theta" in model.state_dict()
