"""gankern.nn layers under torch.autocast("cpu", bf16/fp16): the layer casts its input to the
autocast dtype (gankern's ops are custom ops, which autocast does not cast by itself), so its
output has that dtype and equals the layer run on inputs already in it; gradients reach the fp32
leaves and parameters. (BiasAct: tests/test_bias_act.py; the norm layers: tests/test_norm_layers.py.)"""
import pytest
import torch
from torch import nn

import gankern
from gankern.backends import which

from conftest import assert_close

HALF = [torch.bfloat16, torch.float16]


def _same_under_autocast(layer, inputs, dtype, kernel_op=None):
    """Runs layer(*inputs) under autocast and on the inputs cast to dtype; returns the first
    output (autocast run). kernel_op: the op whose CPU kernel must take the half input."""
    if kernel_op is not None:
        assert which(kernel_op, inputs[0].detach().to(dtype)) == "cpu", "the half input would fall back"
    with torch.autocast("cpu", dtype=dtype):
        got = layer(*inputs)
    want = layer(*(t.detach().to(dtype) for t in inputs))
    got_t = got if isinstance(got, tuple) else (got,)
    want_t = want if isinstance(want, tuple) else (want,)
    assert got_t[0].dtype == dtype
    for a, b in zip(got_t, want_t):
        assert a.dtype == b.dtype and torch.equal(a, b)
    return got_t[0]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layer", [gankern.nn.Upsample2d(2), gankern.nn.Downsample2d(2),
                                   gankern.nn.Upsample2d(2, resample_filter=(1, 2, 1), padding=1)],
                         ids=["up", "down", "up_3tap_pad"])
def test_resample_layers(dtype, layer):
    x = torch.randn(2, 3, 9, 10, requires_grad=True)
    y = _same_under_autocast(layer, [x], dtype, "upfirdn2d")
    y.float().square().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert_close(y, layer(x.detach().to(dtype).double()), dtype)  # and the half kernel is right


@pytest.mark.parametrize("dtype", HALF)
def test_resample_gradients_reach_fp32_parameters(dtype):
    """A conv (autocast runs it in dtype) into Upsample2d: the conv's fp32 weight gets a gradient."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), gankern.nn.Upsample2d(2), gankern.nn.Downsample2d(2))
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=dtype):
        y = net(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    w = net[0].weight
    assert w.dtype == torch.float32 and w.grad is not None and w.grad.dtype == torch.float32
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("kl_reduction", [None, "mean"])
@pytest.mark.parametrize("training", [True, False])
def test_reparameterize(dtype, kl_reduction, training):
    layer = gankern.nn.Reparameterize(kl_reduction=kl_reduction).train(training)
    mu = torch.randn(4, 7, requires_grad=True)
    logvar = (torch.randn(4, 7) * 0.5).requires_grad_()
    z = _same_under_autocast(lambda m, lv: layer(m, lv, seed=11), [mu, logvar], dtype)
    z.float().sum().backward()
    assert mu.grad is not None and mu.grad.dtype == torch.float32
    if training:
        assert logvar.grad is not None and logvar.grad.dtype == torch.float32


def test_no_autocast_keeps_fp32():
    x = torch.randn(1, 2, 5, 5)
    assert gankern.nn.Upsample2d(2)(x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert gankern.nn.Downsample2d(2)(x).dtype == torch.float32
