"""group_norm_act / batch_norm_act: every backend against the float64 reference and torch."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import gankern
from gankern import use_backend
from gankern.reference import norm as ref

from conftest import DEVICES, KERNEL_BACKENDS, KERNEL_DEVICE, assert_close, skip_unless_runnable

ACTS = ["linear", "silu", "gelu", "gelu_tanh", "relu", "lrelu"]
SETTINGS = dict(max_examples=12, deadline=None, derandomize=True)
EXTRAS = ("temb", "scale", "shift", "residual")


def _torch_act(y, act):
    return {"linear": lambda t: t, "silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
            "relu": F.relu, "lrelu": lambda t: F.leaky_relu(t, 0.2)}[act](y)


def _make(shape, channels_last, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(device, dtype)
    if channels_last and x.ndim in (4, 5):
        x = x.to(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
    elif channels_last and x.ndim == 3:
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    return x


def _gn_inputs(shape, G, extras, channels_last, device, dtype=torch.float32, seed=0):
    Nn, C = shape[:2]
    g = torch.Generator().manual_seed(seed + 1)
    x = _make(shape, channels_last, device, dtype, seed)
    p = dict(weight=torch.randn(C, generator=g).to(device), bias=torch.randn(C, generator=g).to(device))
    for e in extras:
        if e == "residual":
            p[e] = torch.randn(shape, generator=g).to(device, dtype)
        else:
            p[e] = (torch.randn(Nn, C, generator=g) * 0.5).to(device)
    return x, p


def _ref64(x, G, p, act, eps=1e-5):
    d = {k: v.double() for k, v in p.items()}
    y, _, _ = ref.group_norm_act(x.double(), G, d.get("weight"), d.get("bias"), eps, act, 0.2, d.get("temb"),
                                 d.get("scale"), d.get("shift"), d.get("residual"))
    return y


shapes = st.tuples(
    st.integers(1, 3),                     # N
    st.integers(1, 4),                     # groups
    st.integers(1, 5),                     # channels per group
    st.lists(st.integers(1, 9), min_size=1, max_size=3),  # spatial
)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(**SETTINGS)
@given(shp=shapes, act=st.sampled_from(ACTS), cl=st.booleans(), extras=st.sets(st.sampled_from(EXTRAS)))
def test_group_norm_act_forward(backend, shp, act, cl, extras):
    Nn, G, Cg, spatial = shp
    skip_unless_runnable("group_norm_act", backend, "cpu")
    shape = (Nn, G * Cg, *spatial)
    x, p = _gn_inputs(shape, G, extras, cl, "cpu")
    with use_backend(backend):
        y = gankern.group_norm_act(x, G, act=act, **p)
    assert_close(y, _ref64(x, G, p, act))
    if backend != "reference":  # kernels keep the input layout
        assert y.stride() == x.stride() or math.prod(spatial) == 1


def _grads(fn, x, p, dy):
    leaves = {"x": x.detach().requires_grad_(), **{k: v.detach().requires_grad_() for k, v in p.items()}}
    names = list(leaves)
    y = fn(dict(leaves))
    gs = torch.autograd.grad(y, [leaves[k] for k in names], dy.to(y.dtype))
    return dict(zip(names, gs))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(**SETTINGS)
@given(shp=shapes, act=st.sampled_from(ACTS), cl=st.booleans(), extras=st.sets(st.sampled_from(EXTRAS)))
def test_group_norm_act_backward(backend, shp, act, cl, extras):
    Nn, G, Cg, spatial = shp
    skip_unless_runnable("group_norm_act_backward", backend, "cpu")
    while Cg * math.prod(spatial) < 3:  # dx of 1- and 2-element groups is 0 analytically: rounding noise
        Cg += 1
    shape = (Nn, G * Cg, *spatial)
    x, p = _gn_inputs(shape, G, extras, cl, "cpu")
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    with use_backend(backend):
        got = _grads(lambda t: gankern.group_norm_act(t.pop("x"), G, act=act, **t), x, p, dy)
    want = _grads(lambda t: _ref64(t.pop("x"), G, t, act), x.double(), {k: v.double() for k, v in p.items()},
                  dy.double())
    for k in want:
        assert_close(got[k], want[k], what=f"d{k}", scale=_grad_scale(k, want))


def _grad_scale(k, want):
    """Error scale of a gradient: its largest element, or for dtemb (a sum of dx over positions that
    cancels to ~0 when a group holds one channel) the largest per-channel sum of |dx|."""
    s = want[k].abs().max().item()
    if k == "temb":
        s = max(s, want["x"].abs().flatten(2).sum(-1).max().item())
    return s + 1e-6


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("cl", [False, True])
def test_group_norm_act_matches_torch(act, cl):
    x, p = _gn_inputs((2, 64, 7, 5), 32, (), cl, "cpu")
    y = gankern.group_norm_act(x, 32, act=act, **p)
    want = _torch_act(F.group_norm(x, 32, p["weight"], p["bias"]), act)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


def test_group_norm_act_extras_match_torch():
    x, p = _gn_inputs((2, 32, 6, 6), 8, EXTRAS, True, "cpu")
    y = gankern.group_norm_act(x, 8, **p)
    e = {k: p[k][..., None, None] for k in ("temb", "scale", "shift")}
    h = F.group_norm(x + e["temb"], 8, p["weight"], p["bias"]) * (1 + e["scale"]) + e["shift"]
    torch.testing.assert_close(y, F.silu(h) + p["residual"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cl", [False, True])
def test_group_norm_act_one_spatial_element(backend, cl):
    """(N, C, 1, 1): a UNet bottleneck after global pooling; each group is Cg single values."""
    skip_unless_runnable("group_norm_act", backend, "cpu")
    x, p = _gn_inputs((3, 12, 1, 1), 4, EXTRAS, cl, "cpu")
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    with use_backend(backend):
        y = gankern.group_norm_act(x, 4, act="gelu_tanh", **p)
        got = _grads(lambda t: gankern.group_norm_act(t.pop("x"), 4, act="gelu_tanh", **t), x, p, dy)
    assert_close(y, _ref64(x, 4, p, "gelu_tanh"))
    want = _grads(lambda t: _ref64(t.pop("x"), 4, t, "gelu_tanh"), x.double(), {k: v.double() for k, v in p.items()},
                  dy.double())
    for k in want:
        assert_close(got[k], want[k], what=f"d{k}", scale=_grad_scale(k, want))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_group_norm_act_large_group(backend):
    """One group of 1.2M elements, far from zero mean: the statistics must not cancel. (The fp32
    reference itself misses the bound here: torch's fp32 var loses digits at mean/std = 300.)"""
    skip_unless_runnable("group_norm_act", backend, "cpu")
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 2, 1000, 600, generator=g) * 0.1 + 30.0
    w, b = torch.randn(2, generator=g), torch.randn(2, generator=g)
    with use_backend(backend):
        y = gankern.group_norm_act(x, 1, w, b, act="silu")
    assert_close(y, _ref64(x, 1, dict(weight=w, bias=b), "silu"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_group_norm_act_statistics(backend):
    skip_unless_runnable("group_norm_act", backend, "cpu")
    x = _make((2, 12, 5, 3), False, "cpu") + 4
    with use_backend(backend):
        y, mean, rstd = torch.ops.gankern.group_norm_act(x, 3, None, None, 1e-5, "linear", 0.0, None, None, None, None)
    xg = x.double().reshape(2, 3, -1)
    assert_close(mean, xg.mean(-1), what="mean")
    assert_close(rstd, torch.rsqrt(xg.var(-1, unbiased=False) + 1e-5), what="rstd")


@pytest.mark.parametrize("cl", [False, True])
def test_triton_split_reduction(monkeypatch, cl):
    """Few (sample, channel-block) programs: the positions are split across programs and merged."""
    skip_unless_runnable("group_norm_act", "triton", "cpu")
    from gankern.triton import norm as tk
    monkeypatch.setattr(tk, "INTERPRETER_PROGRAMS", 64)
    assert tk._tiling(1, 8, 40 * 33, cl, torch.device("cpu"))[3] > 1
    x, p = _gn_inputs((1, 8, 40, 33), 2, ("temb", "scale"), cl, "cpu")
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    with use_backend("triton"):
        got = _grads(lambda t: gankern.group_norm_act(t.pop("x"), 2, act="silu", **t), x, p, dy)
        y = gankern.group_norm_act(x, 2, act="silu", **p)
    assert_close(y, _ref64(x, 2, p, "silu"))
    want = _grads(lambda t: _ref64(t.pop("x"), 2, t, "silu"), x.double(), {k: v.double() for k, v in p.items()},
                  dy.double())
    for k in want:
        assert_close(got[k], want[k], what=f"d{k}", scale=_grad_scale(k, want))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("cl", [False, True])
def test_cpu_activation_passes(act, cl):
    """The CPU kernels' own activation code (vector body and scalar tail, both layouts) against the
    reference activation and derivative, far into the tails, with inf and NaN."""
    skip_unless_runnable("group_norm_act", "cpu", "cpu")
    from gankern.ops.norm import _NativeKernels
    from gankern.reference.activations import get
    z = torch.cat([torch.linspace(-30, 30, 197), torch.tensor([float("inf"), -float("inf"), float("nan")])])
    n = z.numel()
    x = z.reshape(1, n, 1) if cl else z.reshape(1, 1, n)
    C, HW = (n, 1) if cl else (1, n)
    ones, zeros = torch.ones(1, C), torch.zeros(1, C)
    k = _NativeKernels("cpu")
    y = k.apply(x, zeros, ones, zeros, None, 1, C, HW, cl, act, 0.2).flatten()
    d = k.bwd_apply(torch.ones_like(x), x, zeros, ones, zeros, ones, zeros, zeros, 1, C, HW, cl, act, 0.2).flatten()
    a = get(act)
    fin = torch.isfinite(z)
    assert_close(y, a.fn(z.double(), 0.2), what="act")
    assert_close(d[fin], a.grad(z.double(), 0.2)[fin], what="act'")


def test_group_norm_act_empty_and_noncontiguous():
    x = torch.randn(3, 8, 10, 6)[:, :, ::2, 1:]  # neither contiguous nor channels_last
    y = gankern.group_norm_act(x, 4, act="gelu")
    assert_close(y, _ref64(x, 4, {}, "gelu"))
    e = gankern.group_norm_act(torch.randn(0, 8, 4, 4), 4)
    assert e.shape == (0, 8, 4, 4)


def test_reference_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 2, dtype=torch.float64, requires_grad=True)
    args = [torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    extras = [torch.randn(2, 6, dtype=torch.float64, requires_grad=True) * 0.3 for _ in range(3)]
    extras = [e.detach().requires_grad_() for e in extras]
    r = torch.randn(2, 6, 3, 2, dtype=torch.float64, requires_grad=True)
    with use_backend("reference"):
        for act in ("silu", "gelu_tanh", "lrelu"):
            f = lambda x, w, b, t, s, sh, r: gankern.group_norm_act(x, 3, w, b, act=act, temb=t, scale=s,  # noqa
                                                                    shift=sh, residual=r)
            assert torch.autograd.gradcheck(f, (x, *args, *extras, r))
        for training in (True, False):
            rm, rv = torch.randn(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.5
            g = lambda x, w, b: gankern.batch_norm_act(x, rm.clone(), rv.clone(), w, b, training=training,  # noqa
                                                       act="silu")
            assert torch.autograd.gradcheck(g, (x, *args))


def test_opcheck():
    x = torch.randn(2, 8, 4, 3)
    w, b = torch.randn(8), torch.randn(8)
    t = torch.randn(2, 8)
    for args in [(x, 4, w, b, 1e-5, "silu", 0.0, t, t * 0.1, t * 0.2, torch.randn_like(x)),
                 (x.to(memory_format=torch.channels_last), 2, None, None, 1e-5, "gelu", 0.0, None, None, None, None)]:
        torch.library.opcheck(torch.ops.gankern.group_norm_act.default, args)
    _, mean, rstd = torch.ops.gankern.group_norm_act(x, 4, w, b, 1e-5, "silu", 0.0, t, None, None, None)
    torch.library.opcheck(torch.ops.gankern.group_norm_act_backward.default,
                          (torch.randn_like(x), x, mean, rstd, 4, w, b, 1e-5, "silu", 0.0, t, None, None))
    rm, rv = torch.zeros(8), torch.ones(8)
    for training in (True, False):
        torch.library.opcheck(torch.ops.gankern.batch_norm_act.default,
                              (x, w, b, rm, rv, training, 1e-5, "relu", 0.0, None))
        _, m, v = torch.ops.gankern.batch_norm_act(x, w, b, rm, rv, training, 1e-5, "relu", 0.0, None)
        torch.library.opcheck(torch.ops.gankern.batch_norm_act_backward.default,
                              (torch.randn_like(x), x, m, v, w, b, training, 1e-5, "relu", 0.0))


# ---- batch norm ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(**SETTINGS)
@given(shp=shapes, act=st.sampled_from(ACTS), cl=st.booleans(), training=st.booleans())
def test_batch_norm_act(backend, shp, act, cl, training):
    Nn, G, Cg, spatial = shp
    skip_unless_runnable("batch_norm_act", backend, "cpu")
    batch = Nn + 1 if (Nn + 1) * math.prod(spatial) >= 3 else 3  # dx of 2 values per channel is 0: noise
    shape = (batch, G * Cg, *spatial)
    C = shape[1]
    x, p = _gn_inputs(shape, 1, (), cl, "cpu")
    g = torch.Generator().manual_seed(3)
    rm, rv = torch.randn(C, generator=g), torch.rand(C, generator=g) + 0.5
    dy = torch.randn(shape, generator=g)
    with use_backend(backend):
        got = _grads(lambda t: gankern.batch_norm_act(t.pop("x"), rm.clone(), rv.clone(), training=training, act=act,
                                                      **t), x, p, dy)
        y = gankern.batch_norm_act(x, rm.clone(), rv.clone(), training=training, act=act, **p)
    def ref_fn(t):
        return ref.batch_norm_act(t.pop("x"), t["weight"], t["bias"], rm.double(), rv.double(), training, 1e-5, act,
                                  0.2, None)[0]

    want = _grads(ref_fn, x.double(), {k: v.double() for k, v in p.items()}, dy.double())
    assert_close(y, ref_fn({"x": x.double(), **{k: v.double() for k, v in p.items()}}))
    for k in want:
        assert_close(got[k], want[k], what=f"d{k}", scale=_grad_scale(k, want))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("momentum", [0.1, 0.7])
def test_batch_norm_running_stats(backend, momentum):
    skip_unless_runnable("batch_norm_act", backend, "cpu")
    C = 6
    rm, rv = torch.zeros(C), torch.ones(C)
    trm, trv = rm.clone(), rv.clone()
    w, b = torch.randn(C), torch.randn(C)
    with use_backend(backend):
        for step in range(4):
            x = _make((3, C, 4, 5), step % 2 == 1, "cpu", seed=step) * (step + 1) + step
            y = gankern.batch_norm_act(x, rm, rv, w, b, training=True, momentum=momentum, act="relu")
            want = F.relu(F.batch_norm(x, trm, trv, w, b, training=True, momentum=momentum))
            torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rm, trm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rv, trv, rtol=1e-5, atol=1e-6)
    with use_backend(backend):
        y = gankern.batch_norm_act(x, rm, rv, w, b, training=False, act="lrelu", alpha=0.1)
    torch.testing.assert_close(y, F.leaky_relu(F.batch_norm(x, trm, trv, w, b), 0.1), rtol=1e-5, atol=1e-5)


# ---- bad inputs ------------------------------------------------------------------------------

def test_bad_inputs():
    x = torch.randn(2, 6, 4, 4)
    with pytest.raises(ValueError, match="num_groups"):
        gankern.group_norm_act(x, 4)
    with pytest.raises(TypeError, match="num_groups"):
        gankern.group_norm_act(x, 2.0)
    with pytest.raises(ValueError, match="weight"):
        gankern.group_norm_act(x, 3, torch.ones(5))
    with pytest.raises(ValueError, match="eps"):
        gankern.group_norm_act(x, 3, eps=0.0)
    with pytest.raises(ValueError, match="scale"):
        gankern.group_norm_act(x, 3, scale=torch.ones(2, 5))
    with pytest.raises(ValueError, match="temb"):
        gankern.group_norm_act(x, 3, temb=torch.ones(6))
    with pytest.raises(ValueError, match="residual"):
        gankern.group_norm_act(x, 3, residual=torch.ones(2, 6, 4))
    with pytest.raises(ValueError, match="act"):
        gankern.group_norm_act(x, 3, act="tanh")
    with pytest.raises(TypeError, match="x"):
        gankern.group_norm_act(x.long(), 3)
    with pytest.raises(ValueError, match="x"):
        gankern.group_norm_act(torch.randn(6), 3)
    with pytest.raises(ValueError, match="running_mean"):
        gankern.batch_norm_act(x, None, None, training=False)
    with pytest.raises(ValueError, match="bias"):
        gankern.batch_norm_act(x, None, None, None, torch.ones(7), training=True)
    with pytest.raises(ValueError, match="more than 1 value"):
        gankern.batch_norm_act(torch.randn(1, 6, 1, 1), None, None, training=True)
    with pytest.raises(ValueError, match="eps"):
        gankern.batch_norm_act(x, None, None, training=True, eps=-1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_runs_on_every_device(device):
    x = torch.randn(2, 8, 4, 4, device=device).to(torch.bfloat16)
    y = gankern.group_norm_act(x, 4, act="silu")
    assert y.dtype == torch.bfloat16
    assert_close(y, _ref64(x.float(), 4, {}, "silu"), dtype=torch.bfloat16)
    if device == "cpu":
        from gankern.backends import which
        assert which("group_norm_act", x) == "cpu"


# ---- bf16 / fp16 on the CPU backend: loads and stores in the dtype, math in fp32 --------------------
# Tolerances (conftest TOL) are a few units of the output format's rounding relative to the
# reference's magnitude; the inputs are exact in the format, so that rounding and the fp32 math are
# the only errors. Parameter gradients are fp32 sums and keep the fp32 tolerance.

HALF = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", HALF)
@settings(**SETTINGS)
@given(shp=shapes, act=st.sampled_from(ACTS), cl=st.booleans(), extras=st.sets(st.sampled_from(EXTRAS)))
def test_cpu_group_norm_act_half(dtype, shp, act, cl, extras):
    Nn, G, Cg, spatial = shp
    while Cg * math.prod(spatial) < 3:  # dx of 1- and 2-element groups is 0 analytically
        Cg += 1
    shape = (Nn, G * Cg, *spatial)
    x, p = _gn_inputs(shape, G, extras, cl, "cpu", dtype)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    with use_backend("cpu"):
        y = gankern.group_norm_act(x, G, act=act, **p)
        got = _grads(lambda t: gankern.group_norm_act(t.pop("x"), G, act=act, **t), x, p, dy)
    assert y.dtype == dtype and (y.stride() == x.stride() or math.prod(spatial) == 1)
    assert_close(y, _ref64(x, G, p, act), dtype=dtype)
    want = _grads(lambda t: _ref64(t.pop("x"), G, t, act), x.double(), {k: v.double() for k, v in p.items()},
                  dy.double())
    for k in want:
        assert got[k].dtype == p.get(k, x).dtype
        assert_close(got[k], want[k], dtype=dtype if k in ("x", "residual") else torch.float32, what=f"d{k}",
                     scale=_grad_scale(k, want))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("shape, G", [((4, 64, 16, 16), 32), ((3, 96, 9, 11), 8), ((2, 40, 33), 4),
                                      ((1, 64, 30, 30), 16)])
def test_cpu_group_norm_act_half_fused_shapes(dtype, cl, shape, G):
    """Shapes with enough (sample, group) items for the fused one-pass kernels, odd sizes included."""
    x, p = _gn_inputs(shape, G, EXTRAS, cl, "cpu", dtype)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    with use_backend("cpu"):
        got = _grads(lambda t: gankern.group_norm_act(t.pop("x"), G, act="silu", **t), x, p, dy)
        y = gankern.group_norm_act(x, G, act="silu", **p)
    assert_close(y, _ref64(x, G, p, "silu"), dtype=dtype)
    want = _grads(lambda t: _ref64(t.pop("x"), G, t, "silu"), x.double(), {k: v.double() for k, v in p.items()},
                  dy.double())
    for k in want:
        assert_close(got[k], want[k], dtype=dtype if k in ("x", "residual") else torch.float32, what=f"d{k}",
                     scale=_grad_scale(k, want))


@pytest.mark.parametrize("dtype", HALF)
@settings(**SETTINGS)
@given(shp=shapes, act=st.sampled_from(ACTS), cl=st.booleans(), training=st.booleans(), res=st.booleans())
def test_cpu_batch_norm_act_half(dtype, shp, act, cl, training, res):
    Nn, G, Cg, spatial = shp
    C = G * Cg
    shape = (Nn + 1, C, *spatial)  # more than one value per channel
    x = _make(shape, cl, "cpu", dtype)
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(C, generator=g), torch.randn(C, generator=g)
    rm, rv = torch.randn(C, generator=g), torch.rand(C, generator=g) + 0.5
    r = torch.randn(shape, generator=g).to(dtype) if res else None
    dy = torch.randn(shape, generator=g).to(dtype)
    leaves = [x.detach().requires_grad_(), w.requires_grad_(), b.requires_grad_()]
    with use_backend("cpu"):
        y = gankern.batch_norm_act(leaves[0], rm.clone(), rv.clone(), leaves[1], leaves[2], training=training, act=act,
                                   residual=r)
        got = torch.autograd.grad(y, leaves, dy)
    want_leaves = [t.detach().double().requires_grad_() for t in leaves]
    want_y, _, _ = ref.batch_norm_act(want_leaves[0], want_leaves[1], want_leaves[2], rm.double(), rv.double(),
                                      training, 1e-5, act, 0.2, None if r is None else r.double())
    want = torch.autograd.grad(want_y, want_leaves, dy.double())
    assert y.dtype == dtype
    assert_close(y, want_y, dtype=dtype)
    for name, a, e in zip(("x", "weight", "bias"), got, want):
        assert_close(a, e, dtype=dtype if name == "x" else torch.float32, what=f"d{name}",
                     scale=e.abs().max().item() + 1e-6)


# ---- GPU (skipped without CUDA) ----------------------------------------------------------------

@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("shape", [(1, 64, 64, 64), (2, 40, 7, 9), (3, 24, 5, 4, 3)])
def test_group_norm_act_dtypes(backend, dtype, cl, shape):
    skip_unless_runnable("group_norm_act", backend, KERNEL_DEVICE, dtype)
    G = 8
    x, p = _gn_inputs(shape, G, EXTRAS, cl, KERNEL_DEVICE, dtype)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(KERNEL_DEVICE, dtype)
    with use_backend(backend):
        got = _grads(lambda t: gankern.group_norm_act(t.pop("x"), G, act="silu", **t), x, p, dy)
        y = gankern.group_norm_act(x, G, act="silu", **p)
    assert y.dtype == dtype
    assert_close(y, _ref64(x, G, p, "silu"), dtype=dtype)
    want = _grads(lambda t: _ref64(t.pop("x"), G, t, "silu"), x.double(), {k: v.double() for k, v in p.items()},
                  dy.double())
    for k in want:
        assert_close(got[k], want[k], dtype=dtype if k in ("x", "residual") else torch.float32, what=f"d{k}",
                     scale=_grad_scale(k, want))


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_act_channels_last_on_kernel_device(backend, training):
    skip_unless_runnable("batch_norm_act", backend, KERNEL_DEVICE)
    x = _make((16, 24, 9, 9), True, KERNEL_DEVICE)
    w, b = torch.randn(24, device=KERNEL_DEVICE), torch.randn(24, device=KERNEL_DEVICE)
    rm, rv = torch.zeros(24, device=KERNEL_DEVICE), torch.ones(24, device=KERNEL_DEVICE)
    trm, trv = rm.clone(), rv.clone()
    with use_backend(backend):
        y = gankern.batch_norm_act(x, rm, rv, w, b, training=training, act="relu")
    torch.testing.assert_close(y, F.relu(F.batch_norm(x, trm, trv, w, b, training=training)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rm, trm)
    torch.testing.assert_close(rv, trv)


# Shapes of the CPU GroupNorm's small-plane paths (csrc/norm/cpu.cpp): planes shorter than a vector
# (HW < 16, run as one flat run per group), HW not a multiple of the vector width, one channel per
# group, G = C, fewer (sample, group) tasks than threads, and tensors big enough to be split over
# the pool in chunks of several small tasks.
SMALL_PLANES = [((16, 256, 4, 4), 32), ((4, 64, 2, 2), 32), ((3, 24, 3, 3), 8), ((2, 12, 1, 1), 4),
                ((5, 16, 5, 5), 16), ((2, 48, 7, 3), 48), ((1, 8, 6, 6), 1), ((16, 256, 3, 3), 32),
                ((64, 128, 4, 4), 8), ((3, 40, 17), 8)]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("extras", [(), EXTRAS])
@pytest.mark.parametrize("shape, G", SMALL_PLANES)
def test_cpu_group_norm_act_small_planes(act, cl, extras, shape, G):
    x, p = _gn_inputs(shape, G, extras, cl, "cpu")
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    with use_backend("cpu"):
        got = _grads(lambda t: gankern.group_norm_act(t.pop("x"), G, act=act, **t), x, p, dy)
        y = gankern.group_norm_act(x, G, act=act, **p)
    assert_close(y, _ref64(x, G, p, act))
    want = _grads(lambda t: _ref64(t.pop("x"), G, t, act), x.double(), {k: v.double() for k, v in p.items()},
                  dy.double())
    for k in want:
        assert_close(got[k], want[k], what=f"d{k}", scale=_grad_scale(k, want))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("extras", [(), EXTRAS])
@pytest.mark.parametrize("shape, G", [((16, 256, 4, 4), 32), ((4, 64, 2, 2), 32), ((5, 16, 5, 5), 16)])
def test_cpu_group_norm_act_small_planes_half(dtype, extras, shape, G):
    x, p = _gn_inputs(shape, G, extras, False, "cpu", dtype)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    with use_backend("cpu"):
        got = _grads(lambda t: gankern.group_norm_act(t.pop("x"), G, act="silu", **t), x, p, dy)
        y = gankern.group_norm_act(x, G, act="silu", **p)
    assert_close(y, _ref64(x, G, p, "silu"), dtype=dtype)
    want = _grads(lambda t: _ref64(t.pop("x"), G, t, "silu"), x.double(), {k: v.double() for k, v in p.items()},
                  dy.double())
    for k in want:
        assert_close(got[k], want[k], dtype=dtype if k in ("x", "residual") else torch.float32, what=f"d{k}",
                     scale=_grad_scale(k, want))
