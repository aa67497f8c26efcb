"""upfirdn2d: every backend vs the float64 reference over factors, paddings (negative included),
filter sizes and both flips; the backward-is-an-upfirdn2d derivation (gradcheck, gradgradcheck,
third order); the helpers; opcheck, torch.compile, layouts and input validation."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gankern
from gankern.ops import upfirdn2d as ops
from gankern.reference import upfirdn2d as ref

from conftest import KERNEL_BACKENDS, KERNEL_DEVICE, assert_close, skip_unless_runnable


def _ref(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0):
    """The reference in float64, with the functional API's argument forms."""
    upx, upy = ops._factor(up, "up")
    downx, downy = ops._factor(down, "down")
    pad = ops._padding(padding)
    return ref.upfirdn2d(x.double(), f.double(), upx, upy, downx, downy, *pad, flip_filter, gain)


def _run(backend, *args, **kw):
    with gankern.use_backend(backend):
        return gankern.upfirdn2d(*args, **kw)


@st.composite
def problems(draw):
    """A random upfirdn2d call that leaves at least one output sample."""
    up = draw(st.sampled_from([1, 2, 3, 4, [2, 1], [1, 3]]))
    down = draw(st.sampled_from([1, 2, 3, 4, [1, 2], [3, 1]]))
    sep = draw(st.booleans())
    k = draw(st.integers(1, 8))
    fshape = [k] if sep else [draw(st.integers(1, 6)), k]
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 5))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    form = draw(st.sampled_from(["int", "xy", "full"]))
    pads = [draw(st.integers(-3, 5)) for _ in range(4)]
    padding = {"int": pads[0], "xy": pads[:2], "full": pads}[form]
    upx, upy = ops._factor(up, "up")
    downx, downy = ops._factor(down, "down")
    px0, px1, py0, py1 = ops._padding(padding)
    kw, kh = fshape[-1], fshape[0]
    if (ref.output_size(H, upy, downy, py0, py1, kh) < 1 or ref.output_size(W, upx, downx, px0, px1, kw) < 1):
        # grow the padding so the call is valid (keeps negative pads in the mix elsewhere)
        padding = [max(px0, kw), max(px1, 0), max(py0, kh), max(py1, 0)]
    return dict(shape=(N, C, H, W), fshape=fshape, up=up, down=down, padding=padding,
                flip_filter=draw(st.booleans()), gain=draw(st.sampled_from([1.0, 4.0, 0.5, -1.5])),
                channels_last=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)))


def _inputs(pb, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(pb["seed"])
    x = torch.randn(pb["shape"], generator=g)
    f = torch.randn(pb["fshape"], generator=g)
    if pb["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device, dtype), f.to(device)


def _kw(pb):
    return {k: pb[k] for k in ("up", "down", "padding", "flip_filter", "gain")}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=25, deadline=None)
@given(pb=problems())
def test_forward_random_problems(backend, pb):
    skip_unless_runnable("upfirdn2d", backend, "cpu")
    x, f = _inputs(pb)
    want = _ref(x, f, **_kw(pb))
    y = _run(backend, x, f, **_kw(pb))
    assert_close(y, want, what=str({k: pb[k] for k in pb if k != "seed"}))
    fmt = torch.channels_last if pb["channels_last"] and not x.is_contiguous() else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt), "output must keep the input's layout"


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=10, deadline=None)
@given(pb=problems())
def test_backward_random_problems(backend, pb):
    """dL/dx (itself an upfirdn2d with swapped factors) equals the reference's autograd gradient."""
    skip_unless_runnable("upfirdn2d", backend, "cpu")
    x, f = _inputs(pb)
    xk = x.clone().requires_grad_()
    y = _run(backend, xk, f, **_kw(pb))
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    with gankern.use_backend(backend):
        (gx,) = torch.autograd.grad(y, [xk], dy)
    xd = x.double().requires_grad_()
    (want,) = torch.autograd.grad(_ref(xd, f, **_kw(pb)), [xd], dy.double())
    assert_close(gx, want, what="dx")


@pytest.mark.parametrize("up, down, padding, fshape, flip", [
    (1, 1, 0, [3], False), (2, 1, [2, 1], [4], True), (1, 2, [1, 2, 0, -1], [3, 5], False),
    ([3, 2], [2, 3], [-1, 2, 3, 0], [4], True), (2, 2, [-2, -1, 1, 3], [2, 3], False), (4, 1, 3, [12], False),
])
def test_gradcheck_first_second_third_order(up, down, padding, fshape, flip):
    """The custom op's autograd (backward = an upfirdn2d, whose backward is one again) in float64."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    f = torch.randn(fshape, dtype=torch.float64, generator=g)
    with gankern.use_backend("reference"):
        fn = lambda x: gankern.upfirdn2d(x, f, up, down, padding, flip_filter=flip, gain=1.3)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_third_order_gradcheck():
    """The gradient of the double-backward graph still matches finite differences."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    f = torch.randn(3, dtype=torch.float64, generator=g)
    with gankern.use_backend("reference"):
        fn = lambda x: gankern.upfirdn2d(x, f, [2, 1], [1, 2], [1, 2, 0, 1], gain=1.3)  # noqa: E731
        dy = torch.randn(fn(x).shape, dtype=torch.float64, generator=g, requires_grad=True)
        assert torch.autograd.gradgradcheck(lambda x, dy: torch.autograd.grad(fn(x), [x], dy, create_graph=True)[0],
                                            (x, dy))


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_second_order_kernels_match_reference(backend):
    skip_unless_runnable("upfirdn2d", backend, "cpu")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 8, 7, generator=g)
    f = torch.randn(4, generator=g)

    def grads(be, x, dtype):
        x = x.to(dtype).requires_grad_()
        with gankern.use_backend(be):
            y = gankern.upfirdn2d(x, f.to(dtype), up=2, down=[1, 2], padding=[2, 1, 0, 3])
            (gx,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
            (ggx,) = torch.autograd.grad(gx.sin().sum(), [x])
        return gx, ggx

    got = grads(backend, x, torch.float32)
    want = grads("reference", x, torch.float64)
    assert_close(got[0], want[0], what="first order")
    assert_close(got[1], want[1], what="second order")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_stylegan_filters_and_factors(backend):
    """The common cases: up/down 2 with a 4-tap filter, StyleGAN3's up/down 2 and 4 with 12 taps,
    through the helpers, NCHW and channels_last."""
    skip_unless_runnable("upfirdn2d", backend, "cpu")
    x0 = torch.randn(2, 8, 12, 10)
    f4 = gankern.setup_filter([1, 3, 3, 1])
    f12 = gankern.setup_filter(torch.hann_window(12, periodic=False) + 0.1)
    assert f4.shape == (4, 4) and f12.shape == (12,)
    for x in (x0, x0.contiguous(memory_format=torch.channels_last)):
        for f in (f4, f12):
            kw, kh = ops.filter_size(f)
            for fn, kw_args, pad_up, factor in [
                (gankern.upsample2d, dict(up=2), "up", 2), (gankern.upsample2d, dict(up=4), "up", 4),
                (gankern.downsample2d, dict(down=2), "down", 2), (gankern.downsample2d, dict(down=4), "down", 4),
                (gankern.filter2d, dict(), None, 1)]:
                with gankern.use_backend(backend):
                    y = fn(x, f, **kw_args)
                if pad_up == "up":
                    pad = [(kw + factor - 1) // 2, (kw - factor) // 2, (kh + factor - 1) // 2, (kh - factor) // 2]
                    want = _ref(x, f, up=factor, padding=pad, gain=factor * factor)
                    assert y.shape[2:] == (x.shape[2] * factor, x.shape[3] * factor)
                elif pad_up == "down":
                    pad = [(kw - factor + 1) // 2, (kw - factor) // 2, (kh - factor + 1) // 2, (kh - factor) // 2]
                    want = _ref(x, f, down=factor, padding=pad)
                else:
                    want = _ref(x, f, padding=[kw // 2, (kw - 1) // 2, kh // 2, (kh - 1) // 2])
                    assert y.shape == x.shape
                assert_close(y, want, what=f"{fn.__name__} {kw_args} k={tuple(f.shape)}")


def test_helpers_preserve_constant_images():
    """A normalized filter with the helpers' gains keeps a constant image constant in the interior."""
    x = torch.full((1, 1, 16, 16), 3.0)
    f = gankern.setup_filter([1, 3, 3, 1])
    with gankern.use_backend("reference"):
        assert_close(gankern.upsample2d(x, f)[..., 4:-4, 4:-4], torch.full((1, 1, 24, 24), 3.0))
        assert_close(gankern.downsample2d(x, f)[..., 2:-2, 2:-2], torch.full((1, 1, 4, 4), 3.0))
        assert_close(gankern.filter2d(x, f)[..., 2:-2, 2:-2], torch.full((1, 1, 12, 12), 3.0))


def test_setup_filter():
    f = gankern.setup_filter([1, 2, 1])
    assert_close(f, torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float64) / 16)
    assert gankern.setup_filter([1] * 8).shape == (8,)  # >= 8 taps stay separable
    assert gankern.setup_filter([1, 2, 3], separable=True).shape == (3,)
    assert_close(gankern.setup_filter([1, 2], flip_filter=True, normalize=False, separable=True),
                 torch.tensor([2.0, 1.0]).double())
    assert_close(gankern.setup_filter([1, 1], gain=4, separable=True), torch.tensor([1.0, 1.0]).double())
    assert_close(gankern.setup_filter([[1, 1], [1, 1]], gain=4), torch.ones(2, 2).double())
    assert gankern.setup_filter(None).shape == (1, 1)  # [1] is not separable: expanded to 2-D


def test_separable_equals_outer_product():
    """A 1-D filter is the 2-D outer product (gain applied once overall)."""
    x = torch.randn(2, 3, 9, 8)
    f = torch.randn(5)
    a = _ref(x, f, up=2, down=1, padding=2, gain=2.5)
    b = _ref(x, torch.outer(f, f), up=2, down=1, padding=2, gain=2.5)
    assert_close(a, b)


def test_matches_direct_definition():
    """Independent check of the reference: zero insertion, pad, true convolution, decimation by loops."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 1, 4, 5, dtype=torch.float64, generator=g)
    f = torch.randn(3, 2, dtype=torch.float64, generator=g)
    upx, upy, dx, dy, px0, px1, py0, py1 = 2, 3, 3, 2, 1, -1, 2, 0
    u = torch.zeros(4 * upy, 5 * upx, dtype=torch.float64)
    u[::upy, ::upx] = x[0, 0]
    up_ = torch.zeros(u.shape[0] + py0 + py1, u.shape[1] + px0 + px1, dtype=torch.float64)
    up_[py0:, px0:] = u[:, :u.shape[1] + px1]
    kh, kw = f.shape
    OH, OW = (up_.shape[0] - kh) // dy + 1, (up_.shape[1] - kw) // dx + 1
    want = torch.zeros(OH, OW, dtype=torch.float64)
    for oy in range(OH):
        for ox in range(OW):
            for a in range(kh):
                for b in range(kw):  # true convolution: the flipped filter
                    want[oy, ox] += up_[oy * dy + a, ox * dx + b] * f[kh - 1 - a, kw - 1 - b]
    got = ref.upfirdn2d(x, f, upx, upy, dx, dy, px0, px1, py0, py1, False, 1.0)
    assert_close(got[0, 0], want)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_half_precision(backend, dtype):
    """Loads and stores in x's dtype, sums in fp32, each output rounded once: within the format's
    rounding (conftest.TOL) of the float64 reference at the same x; both layouts, the separable and
    the 2-D filter paths, up and down."""
    device = "cpu" if backend == "cpu" else KERNEL_DEVICE
    skip_unless_runnable("upfirdn2d", backend, device, dtype)
    x0 = torch.randn(2, 5, 9, 11, device=device).to(dtype)
    for x in (x0, x0.contiguous(memory_format=torch.channels_last)):
        for f, kw in [(torch.randn(4), dict(up=2, padding=[2, 1])),
                      (torch.randn(3, 12), dict(down=2, padding=[5, 6, 1, 1])),
                      (torch.randn(3, 3), dict(up=[2, 1], down=[1, 2], padding=[1, 2, 0, 1]))]:
            f = f.to(device)
            xk = x.clone().requires_grad_()
            with gankern.use_backend(backend):
                y = gankern.upfirdn2d(xk, f, **kw)
                dy = torch.randn(y.shape, device=device).to(dtype)
                y.backward(dy)
            assert y.dtype == dtype and xk.grad.dtype == dtype
            assert y.is_contiguous(memory_format=torch.channels_last) == (x is not x0)
            assert_close(y, _ref(x, f, **kw), dtype, what="forward")
            xd = x.double().requires_grad_()
            _ref(xd, f, **kw).backward(dy.double())
            assert_close(xk.grad, xd.grad, dtype, what="dx")


def test_automatic_choice_and_fallback_dtype():
    from gankern.backends import which
    x = torch.randn(1, 2, 4, 4)
    assert which("upfirdn2d", x) == ("cpu" if gankern.backends()["cpu"].available else "reference")
    y = gankern.upfirdn2d(x.double(), torch.ones(2), up=2, padding=1)  # float64 runs on the reference
    assert y.dtype == torch.float64


def test_opcheck():
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    for f, up, down, pad, flip in [(torch.randn(4), [2, 2], [1, 1], [2, 1, 2, 1], False),
                                   (torch.randn(3, 2), [1, 3], [2, 1], [0, -1, 2, 1], True)]:
        torch.library.opcheck(torch.ops.gankern.upfirdn2d.default, (x, f, up, down, pad, flip, 1.5))
    xc = torch.randn(2, 3, 5, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.gankern.upfirdn2d.default,
                          (xc, torch.randn(4), [2, 2], [2, 2], [1, 2, 1, 2], False, 1.0))


def test_torch_compile_fullgraph_double_backward():
    f = gankern.setup_filter([1, 3, 3, 1])

    def fn(x):
        y = gankern.downsample2d(gankern.upsample2d(x, f), f)
        (g,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
        return g.square().sum()

    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    want = fn(x)
    (gwant,) = torch.autograd.grad(want, [x])
    with torch._dynamo.config.patch(trace_autograd_ops=True):  # autograd.grad inside the graph
        got = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
    (ggot,) = torch.autograd.grad(got, [x])  # third order through the compiled graph
    assert_close(got, want)
    assert_close(ggot, gwant)


def test_torch_export():
    class M(torch.nn.Module):
        def forward(self, x):
            return gankern.upsample2d(x, gankern.setup_filter([1, 3, 3, 1]))

    ep = torch.export.export(M(), (torch.randn(1, 2, 4, 4),))
    assert any("gankern.upfirdn2d" in str(n.target) for n in ep.graph.nodes)


# ---- validation -------------------------------------------------------------------------------

X = torch.randn(1, 2, 6, 6)
F4 = torch.ones(4)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: gankern.upfirdn2d(X, F4, up=2.0), TypeError, ["up", "int"]),
    (lambda: gankern.upfirdn2d(X, F4, up=0), ValueError, ["up", ">= 1"]),
    (lambda: gankern.upfirdn2d(X, F4, down=[2, 0]), ValueError, ["down", ">= 1"]),
    (lambda: gankern.upfirdn2d(X, F4, down=[1, 2, 3]), ValueError, ["down", "[x, y]"]),
    (lambda: gankern.upfirdn2d(X, F4, up=True), TypeError, ["up"]),
    (lambda: gankern.upfirdn2d(X, F4, padding=[1, 2, 3]), ValueError, ["padding", "3 values"]),
    (lambda: gankern.upfirdn2d(X, F4, padding=1.5), TypeError, ["padding"]),
    (lambda: gankern.upfirdn2d(X, torch.ones(2, 2, 2)), ValueError, ["f", "1-D", "2-D"]),
    (lambda: gankern.upfirdn2d(X, torch.ones(())), ValueError, ["f", "1-D"]),
    (lambda: gankern.upfirdn2d(X, torch.ones(4, dtype=torch.int64)), TypeError, ["f", "floating"]),
    (lambda: gankern.upfirdn2d(X.long(), F4), TypeError, ["x", "floating"]),
    (lambda: gankern.upfirdn2d(torch.randn(2, 6, 6), F4), ValueError, ["x", "4-D"]),
    (lambda: gankern.upfirdn2d(X, F4, padding=-3), ValueError, ["no output"]),
    (lambda: gankern.upfirdn2d(X, F4, flip_filter=1), TypeError, ["flip_filter"]),
    (lambda: gankern.upfirdn2d(X, F4, gain="2"), TypeError, ["gain"]),
    (lambda: gankern.upfirdn2d(X, torch.ones(4, device="meta")), ValueError, ["f", "device"]),
    (lambda: gankern.upsample2d(X, F4, up=1.5), TypeError, ["up"]),
    (lambda: gankern.downsample2d(X, F4, down=-2), ValueError, ["down"]),
    (lambda: gankern.setup_filter(torch.ones(2, 2, 2)), ValueError, ["f"]),
])
def test_bad_inputs(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value!s}"


def test_empty_batch():
    for be in KERNEL_BACKENDS:
        if gankern.backends()[be].available and be != "triton":
            y = _run(be, torch.randn(0, 3, 4, 4), F4, up=2, padding=2)
            assert y.shape == (0, 3, 9, 9)


def test_large_gain_math():
    assert math.isclose(float(_ref(torch.ones(1, 1, 1, 1), torch.ones(1), gain=9.0)), 9.0)


def test_layers_state_dict_and_compile():
    up, down = gankern.nn.Upsample2d(), gankern.nn.Downsample2d(down=2)
    assert set(up.state_dict()) == {"resample_filter"} and set(down.state_dict()) == {"resample_filter"}
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    model = torch.nn.Sequential(up, down)
    want = model(x)
    assert want.shape == x.shape
    got = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    assert_close(got, want)
    got.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
