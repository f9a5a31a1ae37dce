"""The model zoo: architectures, the features/head contract, normalisation, errors, injection points."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.errors import ConfigError
from robustlab.models import available_models, build_model
from robustlab.models.layers import injection_points, replace_injections

MNIST_SHAPE = (1, 28, 28)
CIFAR_SHAPE = (3, 32, 32)
CIFAR_MODELS = {"resnet_v1", "resnet_v2_18"}


def shape_for(name: str) -> tuple[int, int, int]:
    return CIFAR_SHAPE if name in CIFAR_MODELS else MNIST_SHAPE


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str, in_shape=None, num_classes: int = 10, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, in_shape=in_shape or shape_for(name), num_classes=num_classes, **kwargs)


def randomise_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so eval-mode BN is not (almost) the identity."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def test_zoo_lists_all_families():
    assert set(available_models()) >= {"model_a", "model_b", "model_c", "model_d", "lenet5", "fc1200x3", "mlp_a3t",
                                       "tla_cnn", "resnet_v1", "resnet_v2_18"}


@pytest.mark.parametrize(("name", "options", "expected"), [
    ("resnet_v1", {"depth": 20}, 269_722),
    # Linear in n: each extra block per stage adds 97,216 parameters (855,770 would not be 6n+2 option-A).
    ("resnet_v1", {"depth": 56}, 853_018),
    ("resnet_v2_18", {}, 11_173_962),
])
def test_resnet_parameter_counts(name, options, expected):
    assert n_params(build(name, CIFAR_SHAPE, 10, **options)) == expected


def test_resnet_width_scales_channels():
    model = build("resnet_v1", CIFAR_SHAPE, 10, width=2.0)
    assert model.fc.in_features == 128
    assert model.stem.conv.out_channels == 32
    model = build("resnet_v2_18", CIFAR_SHAPE, 10, width=0.5)
    assert model.fc.in_features == 256


@pytest.mark.parametrize(("name", "options", "expected"), [
    # Hand-computed on 28×28 from the layer lists of the papers.
    ("lenet5", {}, 832 + 51_264 + 1024 * 512 + 512 + 5130),
    ("fc1200x3", {}, 785 * 1200 + 2 * 1201 * 1200 + 12_010),
    ("mlp_a3t", {}, 785 * 512 + 513 * 256 + 257 * 128 + 1290),
    ("model_d", {}, 785 * 300 + 2 * 301 * 300 + 3010),
    ("model_d", {"hidden": 200, "depth": 2}, 785 * 200 + 201 * 200 + 2010),
    ("model_a", {}, 1664 + 102_464 + (64 * 10 * 10 + 1) * 128 + 1290),
    # model_b: 'same' first conv 28 -> 14, then 6x6 s2 -> 5, 5x5 -> 1.
    ("model_b", {}, 4160 + 295_040 + 409_728 + 1290),
])
def test_mnist_parameter_counts(name, options, expected):
    assert n_params(build(name, MNIST_SHAPE, 10, **options)) == expected


@pytest.mark.parametrize("name", available_models())
def test_forward_features_head_contract(name):
    in_shape = shape_for(name)
    model = build(name, in_shape, num_classes=7)
    randomise_bn(model)
    model.eval()
    x = torch.rand(2, *in_shape)
    with torch.no_grad():  # same seed before both passes: randomised models (input randomisation) draw alike
        torch.manual_seed(0)
        out = model(x)
        torch.manual_seed(0)
        h = model.features(x)
        again = model.head(h)
    assert out.shape == (2, 7)
    assert h.dim() == 2 and h.shape[0] == 2
    assert torch.allclose(again, out, atol=1e-6)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", available_models())
def test_training_mode_backward(name):
    # Training mode (dropout, batch statistics) keeps the shapes and gradients reach the input and the weights.
    # ResNets are fully convolutional up to the global pool: a 16×16 input keeps this test cheap.
    in_shape = (3, 16, 16) if name in CIFAR_MODELS else shape_for(name)
    model = build(name, in_shape, num_classes=3).train()
    x = torch.rand(2, *in_shape, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 3)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["model_a", "tla_cnn", "resnet_v1", "resnet_v2_18"])
def test_channels_last(name):
    in_shape = shape_for(name)
    model = build(name, in_shape).eval()
    x = torch.rand(2, *in_shape)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize(("name", "in_shape"), [("resnet_v1", (1, 28, 28)), ("resnet_v1", (3, 8, 8)),
                                                ("resnet_v2_18", (3, 9, 9)), ("tla_cnn", (3, 32, 32)),
                                                ("model_b", (3, 32, 32))])
def test_other_input_shapes(name, in_shape):
    model = build(name, in_shape, num_classes=4).eval()
    assert model(torch.rand(2, *in_shape)).shape == (2, 4)


@pytest.mark.parametrize("name", ["model_a", "mlp_a3t", "resnet_v1"])
def test_normalize_is_applied(name):
    in_shape = shape_for(name)
    channels = in_shape[0]
    plain = build(name, in_shape).eval()
    normed = build(name, in_shape, mean=[0.5] * channels, std=[0.25] * channels).eval()
    weights = {k: v for k, v in plain.state_dict().items() if not k.startswith("normalize.")}
    missing, unexpected = normed.load_state_dict(weights, strict=False)  # same weights, own mean/std
    assert sorted(missing) == ["normalize.mean", "normalize.std"] and not unexpected
    x = torch.rand(2, *in_shape)
    with torch.no_grad():
        out_plain = plain(x)
        out_normed = normed(x)
        out_manual = plain((x - 0.5) / 0.25)
    assert not torch.allclose(out_normed, out_plain, atol=1e-4)
    assert torch.allclose(out_normed, out_manual, atol=1e-5)


def test_normalize_buffers_follow_build_args():
    model = build("resnet_v1", CIFAR_SHAPE, mean=[0.4914, 0.4822, 0.4465], std=[0.247, 0.243, 0.261])
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    assert torch.allclose(model.normalize.std.flatten(), torch.tensor([0.247, 0.243, 0.261]))
    assert "normalize.mean" in model.state_dict()


def test_unknown_model_suggests_a_name():
    with pytest.raises(ConfigError, match="did you mean 'resnet_v1'"):
        build_model("resnet_v11", in_shape=CIFAR_SHAPE, num_classes=10)


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="no option 'dpeth'"):
        build_model("resnet_v1", in_shape=CIFAR_SHAPE, num_classes=10, dpeth=20)


@pytest.mark.parametrize("depth", [21, 2, 0, "20", 20.0])
def test_resnet_v1_rejects_bad_depth(depth):
    with pytest.raises(ValueError, match="6n\\+2"):
        build_model("resnet_v1", in_shape=CIFAR_SHAPE, num_classes=10, depth=depth)
    with pytest.raises(ConfigError):  # also a ConfigError, so the CLI prints one line
        build_model("resnet_v1", in_shape=CIFAR_SHAPE, num_classes=10, depth=depth)


@pytest.mark.parametrize(("name", "options"), [("resnet_v1", {"width": 0}), ("resnet_v2_18", {"width": -1.0}),
                                               ("model_d", {"depth": 0}), ("model_d", {"hidden": 2.5}),
                                               ("model_b", {"first_padding": "full"}),
                                               ("mlp_a3t", {"negative_slope": -0.1})])
def test_bad_option_values(name, options):
    with pytest.raises(ConfigError):
        build_model(name, in_shape=shape_for(name), num_classes=10, **options)


@pytest.mark.parametrize(("name", "options"), [("model_b", {}), ("model_b", {"first_padding": "valid"}),
                                               ("model_a", {}), ("lenet5", {})])
def test_input_too_small(name, options):
    with pytest.raises(ValueError, match="too small for model"):
        build_model(name, in_shape=(1, 8, 8), num_classes=10, **options)


def test_model_b_all_valid_does_not_fit_mnist():
    with pytest.raises(ValueError, match="too small"):
        build_model("model_b", in_shape=MNIST_SHAPE, num_classes=10, first_padding="valid")


def test_mismatched_statistics_rejected():
    with pytest.raises(ConfigError, match="mean has 2 values"):
        build_model("lenet5", in_shape=MNIST_SHAPE, num_classes=10, mean=[0.1, 0.2], std=[1.0])


def test_mlp_a3t_encoder_residual():
    model = build("mlp_a3t", MNIST_SHAPE, mean=[0.13], std=[0.31]).eval()
    x = torch.rand(3, *MNIST_SHAPE)
    with torch.no_grad():
        z = model.encoder(x)
        assert z.shape == (3, 256)
        assert torch.allclose(model.residual(z), model(x), atol=1e-6)
        assert model.features(x).shape == (3, 128)
    # The default slope is 0.2 and it is configurable.
    assert model.negative_slope == 0.2
    assert build("mlp_a3t", MNIST_SHAPE, negative_slope=0.1).negative_slope == 0.1


def test_he_init_zero_biases():
    for name in ("lenet5", "fc1200x3"):
        model = build(name, MNIST_SHAPE)
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert layers and all(torch.count_nonzero(m.bias) == 0 for m in layers)
    # He-normal: std ≈ sqrt(2 / fan_in) for the 1200×1200 layers.
    fc = build("fc1200x3", MNIST_SHAPE).body[2]
    assert abs(fc.weight.std().item() - (2 / 1200) ** 0.5) < 0.002


def test_dropout_only_where_specified():
    assert not any(isinstance(m, nn.Dropout) for m in build("lenet5").modules())
    assert not any(isinstance(m, nn.Dropout) for m in build("fc1200x3").modules())
    assert [m.p for m in build("model_a").modules() if isinstance(m, nn.Dropout)] == [0.25, 0.5]
    assert [m.p for m in build("model_b").modules() if isinstance(m, nn.Dropout)] == [0.2, 0.5]
    assert [m.p for m in build("model_d").modules() if isinstance(m, nn.Dropout)] == [0.5] * 3


@pytest.mark.parametrize(("name", "options", "expected"), [("resnet_v1", {}, 10), ("resnet_v1", {"depth": 32}, 16),
                                                           ("resnet_v2_18", {}, 9)])
def test_injection_points(name, options, expected):
    model = build(name, CIFAR_SHAPE, **options)
    names = injection_points(model)
    assert len(names) == expected
    assert names[0] == "stem.inject"
    assert all(isinstance(model.get_submodule(n), nn.Identity) for n in names)


class _AddOne(nn.Module):
    def forward(self, x):
        return x + 1.0


def test_injection_points_sit_before_the_relu():
    model = build("resnet_v1", CIFAR_SHAPE).eval()
    seen: dict[str, torch.Tensor] = {}
    for n in injection_points(model):
        model.get_submodule(n).register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, out))
    with torch.no_grad():
        model(torch.rand(2, *CIFAR_SHAPE))
    # Before the ReLU: the injected tensors still hold negative values (BN output, residual sum).
    assert len(seen) == 10 and all((t < 0).any() for t in seen.values())
    # Replacing the placeholders changes the output (they are on the forward path).
    x = torch.rand(2, *CIFAR_SHAPE)
    with torch.no_grad():
        before = model(x)
        replaced = replace_injections(model, lambda name: _AddOne())
        after = model(x)
    assert len(replaced) == 10 and all(isinstance(model.get_submodule(n), _AddOne) for n in replaced)
    assert not torch.allclose(before, after)
