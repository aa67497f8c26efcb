"""R1 and path-length penalties: through a small discriminator built from gankern layers
(EqualizedConv2d with down=2 + bias_act, a 1x1 downsampling skip, MinibatchStdDev, EqualizedLinear),
R1 and its parameter gradients (the double backward) equal the float64 reference run, and the
compiled (fullgraph=True) penalty equals eager; path length likewise through a toy synthesis."""
import math

import pytest
import torch

import gankern
from gankern import regularizers as R
from gankern.nn import EqualizedConv2d, EqualizedLinear, MinibatchStdDev

from conftest import assert_close, skip_unless_runnable


class TinyD(torch.nn.Module):
    """A StyleGAN2-style residual discriminator at 8x8."""

    def __init__(self):
        super().__init__()
        self.fromrgb = EqualizedConv2d(3, 8, 1, activation="lrelu")
        self.conv0 = EqualizedConv2d(8, 8, 3, activation="lrelu")
        self.conv1 = EqualizedConv2d(8, 16, 3, activation="lrelu", down=2)
        self.skip = EqualizedConv2d(8, 16, 1, bias=False, down=2)
        self.mbstd = MinibatchStdDev(group_size=4, num_channels=1)
        self.conv = EqualizedConv2d(17, 16, 3, activation="lrelu", conv_clamp=256)
        self.fc = EqualizedLinear(16 * 4 * 4, 16, activation="lrelu")
        self.out = EqualizedLinear(16, 1)

    def forward(self, img):
        x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5)) + y
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1)))


class TinyG(torch.nn.Module):
    """ws [N, 2, 8] -> 3x8x8 images through an upsampling EqualizedConv2d."""

    def __init__(self):
        super().__init__()
        self.const = torch.nn.Parameter(torch.randn(8, 4, 4))
        self.affine = EqualizedLinear(8, 8, bias_init=1)
        self.conv = EqualizedConv2d(8, 8, 3, activation="lrelu", up=2)
        self.torgb = EqualizedConv2d(8, 3, 1)

    def forward(self, ws):
        s = self.affine(ws[:, 0])
        x = self.const[None] * s[:, :, None, None]
        x = self.conv(x) * self.affine(ws[:, 1])[:, :, None, None]
        return self.torgb(x)


def _grads(module, loss):
    gs = torch.autograd.grad(loss, list(module.parameters()), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(module.parameters(), gs)]


def _r1_and_grads(D, real, backend, dtype):
    Dd = D.to(dtype)
    with gankern.use_backend(backend):
        r1 = R.r1_penalty(Dd, real.to(dtype), gamma=10.0)
        return r1, _grads(Dd, r1.sum())


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_r1_through_gankern_layers_equals_reference(backend):
    for op in ("upfirdn2d", "bias_act", "minibatch_std"):
        skip_unless_runnable(op, backend, "cpu")
    torch.manual_seed(0)
    D = TinyD()
    for p in D.parameters():  # non-zero biases so every path matters
        torch.nn.init.normal_(p, std=0.5) if p.ndim == 1 else None
    real = torch.randn(8, 3, 8, 8)
    want, gwant = _r1_and_grads(D, real, "reference", torch.float64)
    got, ggot = _r1_and_grads(D, real, backend, torch.float32)
    assert_close(got, want, what="R1")
    for (name, _), g, w in zip(D.named_parameters(), ggot, gwant):
        assert_close(g, w, what=f"dR1/d{name}")


def test_r1_matches_definition():
    """r1_penalty == ||d sum(D(x)) / dx||^2 per sample, scaled by gamma / 2; logits returned."""
    D = TinyD().double()
    real = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    pen, logits = R.r1_penalty(D, real, gamma=4.0, return_logits=True)
    x = real.clone().requires_grad_()
    (g,) = torch.autograd.grad(D(x).sum(), [x])
    assert_close(pen, 2.0 * g.square().sum([1, 2, 3]), dtype=torch.float64)
    assert_close(logits, D(real), dtype=torch.float64)
    assert not real.requires_grad


def test_stock_compile_of_autograd_grad_needs_the_patch():
    """Without trace_autograd_ops, fullgraph compilation of a gradient penalty fails in stock torch
    (the capability compiled_r1_penalty adds)."""
    D = TinyD()
    real = torch.randn(4, 3, 8, 8).requires_grad_()
    fn = torch.compile(lambda x: R._r1(D, x, None, None, False), fullgraph=True, backend="aot_eager")
    with pytest.raises(torch._dynamo.exc.Unsupported, match="trace_autograd_ops"):
        fn(real)
    torch._dynamo.reset()


def test_compiled_r1_equals_eager():
    torch.manual_seed(1)
    D = TinyD()
    real = torch.randn(8, 3, 8, 8)
    want = R.r1_penalty(D, real)
    gwant = _grads(D, want.sum())
    got = R.compiled_r1_penalty(D, backend="aot_eager")(real)
    ggot = _grads(D, got.sum())
    assert_close(got, want, what="compiled R1")
    for (name, _), g, w in zip(D.named_parameters(), ggot, gwant):
        assert_close(g, w, what=f"compiled dR1/d{name}")


def test_path_length_penalty_eager_reference_and_compiled():
    torch.manual_seed(2)
    G = TinyG()
    ws = torch.randn(4, 2, 8)
    noise = torch.randn(4, 3, 8, 8) / math.sqrt(64)
    pl_mean = torch.tensor(0.5)
    pen, new_mean = R.path_length_penalty(G, ws, pl_mean, decay=0.1, noise=noise)
    # the definition, in float64 through the reference backend
    Gd = TinyG().double()
    Gd.load_state_dict(G.state_dict())
    wsd = ws.double().requires_grad_()
    with gankern.use_backend("reference"):
        (g,) = torch.autograd.grad((Gd(wsd) * noise.double()).sum(), [wsd], create_graph=True)
    lengths = g.square().sum(2).mean(1).sqrt()
    mean_want = 0.5 + 0.1 * (lengths.mean() - 0.5)
    assert_close(new_mean, mean_want.detach())
    assert_close(pen, (lengths - mean_want).square().detach())
    gwant = _grads(G, pen.sum())
    cpen, cmean = R.compiled_path_length_penalty(G, backend="aot_eager")(ws, pl_mean, 0.1, noise)
    assert_close(cpen, pen)
    assert_close(cmean, new_mean)
    for (name, _), a, b in zip(G.named_parameters(), _grads(G, cpen.sum()), gwant):
        assert_close(a, b, what=f"compiled dPL/d{name}")


def test_bad_inputs():
    with pytest.raises(TypeError, match="real"):
        R.r1_penalty(TinyD(), torch.zeros(2, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="ws"):
        R.path_length_penalty(TinyG(), [[0.0]], torch.tensor(0.0))
