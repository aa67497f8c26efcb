"""bias_act: every backend vs the float64 reference, gradients of first and second order,
custom-op registration, torch.compile, layouts, and input validation."""
import math
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gankern
from gankern.reference import bias_act as ref
from gankern.reference.activations import ACTIVATIONS

from conftest import DEVICES, KERNEL_BACKENDS, KERNEL_DEVICE, assert_close, skip_unless_runnable

ACTS = sorted(ACTIVATIONS)


def _defaults(act, alpha=None, gain=None):
    a = ACTIVATIONS[act]
    return (a.def_alpha if alpha is None else alpha), (a.def_gain if gain is None else gain)


def _layouts(x):
    """x as contiguous, channels_last (4-D) and a non-dense strided view with the same values."""
    out = {"contiguous": x}
    if x.ndim == 4:
        out["channels_last"] = x.contiguous(memory_format=torch.channels_last)
    wide = torch.empty(*x.shape[:-1], x.shape[-1] * 2, dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    out["strided"] = wide[..., ::2]
    return out


def _run(backend, *args, **kw):
    with gankern.use_backend(backend):
        return gankern.bias_act(*args, **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("act", ACTS)
def test_forward_backward_every_activation(backend, device, act):
    skip_unless_runnable("bias_act", backend, device)
    g = torch.Generator().manual_seed(zlib.crc32(act.encode()))  # hash() varies per process
    x = (torch.randn(3, 10, 5, 7, generator=g) * 3).to(device)
    b = torch.randn(10, generator=g).to(device)
    alpha, gain = _defaults(act)
    for clamp in (None, 0.7):
        want = ref.bias_act(x.double(), b.double(), 1, act, alpha, gain, clamp)
        xk, bk = x.clone().requires_grad_(), b.clone().requires_grad_()
        y = _run(backend, xk, bk, act=act, clamp=clamp)
        assert_close(y, want, what=f"{act} clamp={clamp} forward")
        dy = torch.randn_like(y)
        y.backward(dy)
        xd, bd = x.double().requires_grad_(), b.double().requires_grad_()
        ref.bias_act(xd, bd, 1, act, alpha, gain, clamp).backward(dy.double())
        assert_close(xk.grad, xd.grad, what=f"{act} clamp={clamp} dx")
        assert_close(bk.grad, bd.grad, what=f"{act} clamp={clamp} db")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=12, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), data=st.data(),
       act=st.sampled_from(ACTS), with_bias=st.booleans(), clamp=st.sampled_from([None, 0.0, 0.3, 4.0]))
def test_random_shapes_and_layouts(backend, shape, data, act, with_bias, clamp):
    skip_unless_runnable("bias_act", backend, "cpu")
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    seed = data.draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2
    b = torch.randn(shape[dim], generator=g) if with_bias else None
    alpha, gain = _defaults(act, gain=data.draw(st.sampled_from([None, 1.0, 0.5])))
    want = ref.bias_act(x.double(), None if b is None else b.double(), dim % len(shape), act, alpha, gain, clamp)
    for name, xl in _layouts(x).items():
        y = _run(backend, xl, b, dim=dim, act=act, gain=gain, clamp=clamp)
        assert_close(y, want, what=f"{name} layout")
        if name != "strided":
            assert y.stride() == xl.stride(), "output must keep the input's memory layout"


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_channels_last_backward_and_mismatched_grad_layout(backend):
    skip_unless_runnable("bias_act", backend, "cpu")
    x = torch.randn(2, 16, 6, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    b = torch.randn(16, requires_grad=True)
    y = _run(backend, x, b, act="lrelu", clamp=1.0)
    dy = torch.randn(2, 16, 6, 5)  # NCHW gradient for a channels_last output
    gx, gb = torch.autograd.grad(y, [x, b], dy)
    xd, bd = x.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    wx, wb = torch.autograd.grad(ref.bias_act(xd, bd, 1, "lrelu", 0.2, math.sqrt(2), 1.0), [xd, bd], dy.double())
    assert_close(gx, wx, what="dx")
    assert_close(gb, wb, what="db")


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")  # numpy, in the interpreter
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_nan_and_inf_propagate_like_torch(backend):
    skip_unless_runnable("bias_act", backend, "cpu")
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e30, -1e30, 3.0]])
    if backend == "reference":
        # The reference backend in float32 is torch's own float32 kernels, whose results at +-inf
        # depend on the CPU's vector path (F.gelu(+inf) is NaN with AVX-512 on Intel Xeons, +inf
        # elsewhere); in float64 it is the specification the kernels are held to.
        x = x.double()
    for act in ACTS:
        for clamp in (None, 2.0):
            alpha, gain = _defaults(act)
            want = ref.bias_act(x.double(), None, 1, act, alpha, gain, clamp)
            y = _run(backend, x, None, act=act, clamp=clamp)
            assert_close(y, want, what=f"{act} clamp={clamp}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_nan_inf_and_rounding(dtype):
    """The CPU half types: NaN/Inf survive the conversions, every activation's result rounds to
    nearest-even as torch's own conversion of the float64 reference does (one ulp of slack for the
    fp32 math before the rounding)."""
    skip_unless_runnable("bias_act", "cpu", "cpu", dtype)
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 3e4, -3e4, 3.0, 1e-3, 0.1]])  # |y| < fp16 max
    x = torch.cat([x, torch.randn(1, 1000)], 1).to(dtype)
    for act in ACTS:
        alpha, gain = _defaults(act)
        want = ref.bias_act(x.double(), None, 1, act, alpha, gain, None)
        y = _run("cpu", x, None, act=act)
        assert y.dtype == dtype
        assert_close(y, want, dtype, what=act)
        w = want.to(dtype)  # the correctly rounded result
        ulp = (w.double().abs() * torch.finfo(dtype).eps).clamp_min(torch.finfo(dtype).tiny)
        fin = torch.isfinite(w)
        assert ((y.double() - w.double())[fin].abs() <= ulp[fin]).all(), act


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_empty_and_scalar_inputs(backend):
    skip_unless_runnable("bias_act", backend, "cpu")
    e = torch.empty(0, 4, 3)
    assert _run(backend, e, torch.zeros(4), act="relu").shape == e.shape
    s = torch.tensor(-2.0)
    assert_close(_run(backend, s, act="lrelu"), ref.bias_act(s.double(), None, 0, "lrelu", 0.2, math.sqrt(2), None))


def test_reference_gradcheck_first_and_second_order():
    for act in ACTS:
        x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
        b = torch.randn(3, dtype=torch.float64, requires_grad=True)
        alpha, gain = _defaults(act)
        f = lambda x, b: ref.bias_act(x, b, 1, act, alpha, gain, 5.0)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, b))
        assert torch.autograd.gradgradcheck(f, (x, b))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("act", ["lrelu", "swish", "gelu", "tanh"])
def test_op_gradcheck_first_and_second_order(backend, act):
    """The custom op's own autograd (backward op + its backward), in float64 via the reference
    backend and in float32-vs-float64 for the kernels below."""
    if backend != "reference":
        skip_unless_runnable("bias_act", backend, "cpu")
    dtype = torch.float64 if backend == "reference" else torch.float32
    x = torch.randn(2, 3, 5, dtype=dtype, requires_grad=True)
    b = torch.randn(3, dtype=dtype, requires_grad=True)
    if backend == "reference":
        with gankern.use_backend("reference"):
            f = lambda x, b: gankern.bias_act(x, b, act=act, clamp=3.0)  # noqa: E731
            assert torch.autograd.gradcheck(f, (x, b))
            assert torch.autograd.gradgradcheck(f, (x, b))
        return
    # float32 kernel: second-order gradients equal the reference's
    with gankern.use_backend(backend):
        y = gankern.bias_act(x, b, act=act)
        (gx,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
        gx.square().sum().backward()
    xd, bd = x.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    alpha, gain = _defaults(act)
    (wx,) = torch.autograd.grad(ref.bias_act(xd, bd, 1, act, alpha, gain, None).square().sum(), [xd],
                                create_graph=True)
    wx.square().sum().backward()
    assert_close(gx, wx, what="first-order dx")
    assert_close(x.grad, xd.grad, what="second-order dx")
    assert_close(b.grad, bd.grad, what="second-order db")


def test_r1_penalty_through_bias_act_matches_reference():
    """GAN R1 regularization: || d D(x) / dx ||^2 differentiated w.r.t. the weights."""
    torch.manual_seed(0)
    w = torch.randn(8, 3, 3, 3, requires_grad=True)
    b = torch.randn(8, requires_grad=True)

    def grads(impl):
        img = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
        with gankern.use_backend(impl):
            h = gankern.bias_act(torch.nn.functional.conv2d(img, w, padding=1), b, act="lrelu", clamp=256)
        (g,) = torch.autograd.grad(h.sum(), [img], create_graph=True)
        return torch.autograd.grad(g.square().sum(), [w, b])

    want = grads("reference")
    got = grads("cpu") if gankern.backends()["cpu"].available else want
    for a, e in zip(got, want):
        assert_close(a, e, what="R1 gradient")


def test_opcheck():
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    for clamp in (None, 1.0):
        torch.library.opcheck(torch.ops.gankern.bias_act.default, (x, b, 1, "lrelu", 0.2, 1.4, clamp))
        torch.library.opcheck(torch.ops.gankern.bias_act_backward.default,
                              (torch.randn(2, 4, 3, 3), x, b, 1, "swish", 0.0, 1.4, clamp))
    torch.library.opcheck(torch.ops.gankern.bias_act.default, (x, None, 1, "tanh", 0.0, 1.0, None))


def test_torch_compile_fullgraph_layer():
    layer = gankern.nn.BiasAct(6, act="lrelu", clamp=256.0)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    assert_close(y, layer(x))
    y.sum().backward()
    assert x.grad is not None and layer.bias.grad is not None


def test_torch_export():
    layer = gankern.nn.BiasAct(6, act="swish")
    ep = torch.export.export(layer, (torch.randn(2, 6, 3),))
    assert any("gankern.bias_act" in str(n.target) for n in ep.graph.nodes)


def test_layer_lr_multiplier_and_state_dict():
    layer = gankern.nn.BiasAct(5, act="relu", bias_init=1.0, lr_multiplier=0.01)
    assert torch.allclose(layer.bias, torch.full([5], 100.0))
    x = torch.randn(3, 5)
    want = ref.bias_act(x.double(), torch.ones(5, dtype=torch.float64), 1, "relu", 0.0, math.sqrt(2), None)
    assert_close(layer(x), want)
    assert set(layer.state_dict()) == {"bias"}


@pytest.mark.parametrize("device", DEVICES)
def test_automatic_choice(device):
    x = torch.randn(4, 3, device=device)
    name = gankern.backends  # noqa: F841
    from gankern.backends import which
    chosen = which("bias_act", x)
    if device == "cpu":
        assert chosen == ("cpu" if gankern.backends()["cpu"].available else "reference")
    else:
        assert chosen in ("cuda", "triton")


# ---- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("call, exc, words", [
    (lambda: gankern.bias_act(torch.arange(6).reshape(2, 3)), TypeError, ["x", "floating"]),
    (lambda: gankern.bias_act([1.0, 2.0]), TypeError, ["x", "Tensor"]),
    (lambda: gankern.bias_act(torch.randn(2, 3), torch.randn(4)), ValueError, ["b", "[3]", "(4,)"]),
    (lambda: gankern.bias_act(torch.randn(2, 3), torch.randn(3, 1)), ValueError, ["b", "shape"]),
    (lambda: gankern.bias_act(torch.randn(2, 3), torch.arange(3)), TypeError, ["b", "floating"]),
    (lambda: gankern.bias_act(torch.randn(2, 3), act="mish"), ValueError, ["act", "mish"]),
    (lambda: gankern.bias_act(torch.randn(2, 3), clamp=-1.0), ValueError, ["clamp", ">= 0"]),
    (lambda: gankern.bias_act(torch.randn(2, 3), torch.randn(3), dim=2), ValueError, ["dim=2"]),
    (lambda: gankern.bias_act(torch.randn(2, 3), gain="2"), TypeError, ["gain"]),
    (lambda: gankern.bias_act(torch.randn(2, 3), torch.randn(3, device="meta")), ValueError, ["b", "device"]),
])
def test_bad_inputs(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value!s}"


# ---- kernel backends: half precision, unaligned views; GPU: streams ---------------------------

@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("act", ["lrelu", "swish", "gelu", "tanh"])
def test_half_precision(backend, dtype, act):
    """Loads and stores in the tensor's dtype, math in fp32: within the format's own error of the
    float64 reference (conftest.TOL: about twice the format's epsilon)."""
    device = "cpu" if backend == "cpu" else KERNEL_DEVICE
    skip_unless_runnable("bias_act", backend, device, dtype)
    x = torch.randn(4, 96, 33, 17, device=device).to(dtype)
    b = torch.randn(96, device=device).to(dtype)
    alpha, gain = _defaults(act)
    for xl in _layouts(x).values():
        want = ref.bias_act(xl.double(), b.double(), 1, act, alpha, gain, 1.5)
        xk, bk = xl.clone().requires_grad_(), b.clone().requires_grad_()
        dy = torch.randn(x.shape, device=device).to(dtype)
        with gankern.use_backend(backend):  # the backward kernel too
            y = gankern.bias_act(xk, bk, act=act, clamp=1.5)
            y.backward(dy)
        assert y.dtype == dtype
        assert_close(y, want, dtype, what="forward")
        xd, bd = xl.double().requires_grad_(), b.double().requires_grad_()
        ref.bias_act(xd, bd, 1, act, alpha, gain, 1.5).backward(dy.double())
        assert_close(xk.grad, xd.grad, dtype, what="dx")
        assert_close(bk.grad, bd.grad, dtype, scale=bd.grad.abs().max().item(), what="db")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_unaligned_and_odd_sizes(backend):
    """Views at odd offsets, and sizes not divisible by the vector width, take the scalar path."""
    skip_unless_runnable("bias_act", backend, KERNEL_DEVICE, torch.float16)
    for shape in [(3, 7, 11), (4, 8, 16)]:  # odd size; whole vectors but a misaligned start
        base = torch.randn(1 + math.prod(shape), device=KERNEL_DEVICE, dtype=torch.float16)
        x = base[1:].view(shape)
        b = torch.randn(shape[1], device=KERNEL_DEVICE, dtype=torch.float16)
        want = ref.bias_act(x.double(), b.double(), 1, "lrelu", 0.2, math.sqrt(2), None)
        assert_close(_run(backend, x, b, act="lrelu"), want, torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_side_stream(backend):
    skip_unless_runnable("bias_act", backend, "cuda")
    s = torch.cuda.Stream()
    x = torch.randn(64, 128, 16, 16, device="cuda")
    want = ref.bias_act(x.double(), None, 1, "swish", 0.0, math.sqrt(2), None)
    with torch.cuda.stream(s):
        x2 = x * 1
        y = _run(backend, x2, act="swish")
    s.synchronize()
    assert_close(y, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layer_under_cpu_autocast_runs_the_half_kernel(dtype):
    """torch.autocast("cpu", dtype) around gankern.nn.BiasAct: the CPU kernel runs in that dtype
    (no fallback to the reference), forward and backward, and matches the float64 reference."""
    skip_unless_runnable("bias_act", "cpu", "cpu", dtype)
    layer = gankern.nn.BiasAct(6, act="lrelu", clamp=256.0, bias_init=0.5)
    x = torch.randn(2, 6, 9, 11, requires_grad=True)
    from gankern.backends import which
    assert which("bias_act", x.detach().to(dtype)) == "cpu"
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    xd = x.detach().to(dtype).double()  # the input as the kernel saw it
    want = ref.bias_act(xd, layer.bias.detach().double(), 1, "lrelu", 0.2, math.sqrt(2), 256.0)
    assert_close(y, want, dtype)
    assert x.grad is not None and layer.bias.grad is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,dim,layout", [
    ((3, 5, 7, 9), 1, "contiguous"), ((3, 5, 7, 9), 1, "channels_last"), ((2, 3, 700, 800), 1, "contiguous"),
    ((6, 4, 3), 0, "contiguous"), ((37, 11), 1, "contiguous"), ((3, 5, 7, 9), 2, "contiguous"),
    ((3, 5, 7, 9), 1, "transposed")])
def test_half_bias_gradient_sums_on_the_cpu(shape, dim, layout, dtype):
    """The bias gradient of a half tensor: fp32 sums in slices (ops/bias_act.py) equal the float64
    sums within fp32 accumulation error; layouts it does not slice go to torch's sum."""
    from gankern._tensors import _half_channel_sums_cpu
    from gankern.ops.bias_act import _reduce_to_bias
    torch.manual_seed(0)
    g = torch.randn(shape).to(dtype)
    if layout == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        g = g.transpose(2, 3)
    want = g.double().sum([d for d in range(g.ndim) if d != dim])
    sliced = _half_channel_sums_cpu(g, dim)
    assert (sliced is None) == (layout == "transposed" or dim == 2)
    got = _reduce_to_bias(g, torch.zeros(g.shape[dim], dtype=torch.float32), dim)
    assert got.dtype == torch.float32 and got.shape == want.shape
    tol = 1e-6 * g.double().abs().sum().item() / g.shape[dim] + 1e-6
    assert (got.double() - want).abs().max().item() <= tol
