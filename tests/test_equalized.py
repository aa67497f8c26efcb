"""EqualizedLinear / EqualizedConv2d: equal outputs (and gradients) to StyleGAN2's plain-torch
formulation (weight * gain, naive-order conv2d_resample, x + b, activation, gain, clamp) with the
weight gain folded into the kernel calls; StyleGAN2 state_dict keys; torch.compile(fullgraph=True)."""
import math

import pytest
import torch
import torch.nn.functional as F

import gankern
from gankern.nn import EqualizedConv2d, EqualizedLinear
from gankern.ops import upfirdn2d as U
from gankern.reference import conv2d_resample as ref_conv

from conftest import assert_close

ACTS = {"linear": (lambda z: z, 1.0), "lrelu": (lambda z: F.leaky_relu(z, 0.2), math.sqrt(2)),
        "relu": (F.relu, math.sqrt(2)), "tanh": (torch.tanh, 1.0)}


def _plain_linear(layer, x, weight, bias):
    """StyleGAN2's FullyConnectedLayer in plain torch, float64."""
    w = weight.double() * (layer.lr_multiplier / math.sqrt(layer.in_features))
    y = x.double() @ w.t()
    if bias is not None:
        y = y + bias.double() * layer.lr_multiplier
    fn, gain = ACTS[layer.activation]
    return fn(y) * gain


def _plain_conv(layer, x, weight, bias, gain=1.0):
    """StyleGAN2's Conv2dLayer in plain torch, float64, the naive order of conv2d_resample."""
    w = weight.double() * layer.weight_gain
    f = layer.resample_filter.double()
    pad = ref_conv.centring_padding(U._padding(layer.padding), U.filter_size(f), layer.up, layer.down)
    y = ref_conv.conv2d_resample(x.double(), w, f, layer.up, layer.down, pad, 1, layer.up == 1, False)
    if bias is not None:
        y = y + bias.double()[None, :, None, None]
    fn, act_gain = ACTS[layer.activation]
    y = fn(y) * act_gain * gain
    if layer.conv_clamp is not None:
        y = y.clamp(-layer.conv_clamp * gain, layer.conv_clamp * gain)
    return y


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("lr_multiplier, bias", [(1.0, True), (0.01, True), (1.0, False)])
def test_linear_matches_plain_torch(act, lr_multiplier, bias):
    layer = EqualizedLinear(7, 5, bias=bias, activation=act, lr_multiplier=lr_multiplier, bias_init=0.5)
    if bias:
        with torch.no_grad():
            layer.bias.add_(torch.randn(5) / lr_multiplier)
    x = torch.randn(3, 7, requires_grad=True)
    y = layer(x)
    want = _plain_linear(layer, x, layer.weight, layer.bias)
    assert_close(y, want)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, layer.weight], g)
    xd = x.detach().double().requires_grad_()
    wd = layer.weight.detach().double().requires_grad_()
    want_g = torch.autograd.grad(_plain_linear(layer, xd, wd, layer.bias), [xd, wd], g.double())
    assert_close(got[0], want_g[0], what="dx")
    assert_close(got[1], want_g[1], what="dweight")


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("k, up, down, clamp", [(3, 1, 1, None), (3, 2, 1, 0.5), (3, 1, 2, None), (1, 1, 2, 256.0),
                                                (1, 2, 1, None), (4, 1, 1, 1.0)])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_conv_matches_plain_torch(backend, act, k, up, down, clamp):
    if not gankern.backends()[backend].available:
        pytest.skip(f"{backend} unavailable")
    layer = EqualizedConv2d(4, 6, k, activation=act, up=up, down=down, conv_clamp=clamp)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with gankern.use_backend(backend):
        y = layer(x, gain=0.7)
        g = torch.randn_like(y)
        gx, gw, gb = torch.autograd.grad(y, [x, layer.weight, layer.bias], g)
    xd = x.detach().double().requires_grad_()
    wd = layer.weight.detach().double().requires_grad_()
    bd = layer.bias.detach().double().requires_grad_()
    want = _plain_conv(layer, xd, wd, bd, gain=0.7)
    assert_close(y, want)
    for got, w, name in zip((gx, gw, gb), torch.autograd.grad(want, [xd, wd, bd], g.double()), "xwb"):
        assert_close(got, w, what=f"d{name}")


def test_state_dict_keys_and_shapes():
    lin = EqualizedLinear(8, 4)
    assert {k: tuple(v.shape) for k, v in lin.state_dict().items()} == {"weight": (4, 8), "bias": (4,)}
    conv = EqualizedConv2d(3, 5, 3, down=2)
    assert {k: tuple(v.shape) for k, v in conv.state_dict().items()} == {
        "weight": (5, 3, 3, 3), "bias": (5,), "resample_filter": (4, 4)}
    frozen = EqualizedConv2d(3, 5, 3, trainable=False, bias=False)
    assert set(frozen.state_dict()) == {"weight", "resample_filter"} and not list(frozen.parameters())
    assert EqualizedConv2d(3, 5, 3, channels_last=True).weight.is_contiguous(memory_format=torch.channels_last)
    # a state_dict round trip reproduces the layer
    other = EqualizedConv2d(3, 5, 3, down=2)
    other.load_state_dict(conv.state_dict())
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(other(x), conv(x))


def test_compile_fullgraph():
    torch.manual_seed(1)
    conv = EqualizedConv2d(3, 4, 3, activation="lrelu", down=2, conv_clamp=256)
    lin = EqualizedLinear(4 * 4 * 4, 2, activation="lrelu", lr_multiplier=0.1)
    fn = lambda x: lin(conv(x).flatten(1))  # noqa: E731
    x = torch.randn(2, 3, 8, 8)
    assert_close(torch.compile(fn, fullgraph=True, backend="aot_eager")(x), fn(x))
