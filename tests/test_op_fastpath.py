"""The eager fast path of gankern._op.custom_op: taken in plain eager mode only, and the same
outputs and gradients (bitwise, on the CPU) as the torch.library custom-op path."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gankern
from gankern import _op
from gankern.schedulers import DDIMScheduler


@pytest.fixture
def counted():
    """Count fast-path calls per op inside the test."""
    _op.calls.clear()
    old, _op.count_calls = _op.count_calls, True
    try:
        yield _op.calls
    finally:
        _op.count_calls = old
        _op.calls.clear()


def _leaf(*shape, positive=False):
    t = torch.randn(*shape, dtype=torch.float32)
    return (t.abs() + 0.5 if positive else t).requires_grad_()


def _cases():
    """(name, op names the fast path must take, factory of (leaves, call))."""
    def bias_act():
        x, b = _leaf(2, 6, 3, 5), _leaf(6)
        return (x, b), lambda: gankern.bias_act(x, b, act="lrelu", clamp=1.5)

    def group_norm():
        x, w, b, t = _leaf(2, 8, 3, 5), _leaf(8), _leaf(8), _leaf(2, 8)
        return (x, w, b, t), lambda: gankern.group_norm_act(x, 4, w, b, act="silu", temb=t)

    def batch_norm():
        x, w, b = _leaf(4, 6, 3, 3), _leaf(6), _leaf(6)
        rm, rv = torch.zeros(6), torch.ones(6)
        return (x, w, b), lambda: gankern.batch_norm_act(x, rm.clone(), rv.clone(), w, b, training=True, act="relu")

    def layer_norm():
        x, r, w, b = _leaf(3, 5, 16), _leaf(3, 5, 16), _leaf(16), _leaf(16)
        return (x, r, w, b), lambda: gankern.add_layer_norm(x, r, w, b)

    def geglu():
        x = _leaf(3, 5, 16)
        return (x,), lambda: gankern.geglu(x, approximate="tanh")

    def vae():
        mu, lv = _leaf(4, 7), _leaf(4, 7)
        return (mu, lv), lambda: gankern.reparameterize_kl(mu, lv, seed=3)

    def upfirdn():
        x = _leaf(2, 3, 6, 7)
        f = gankern.setup_filter([1, 3, 3, 1])
        return (x,), lambda: gankern.upfirdn2d(x, f, up=2, down=1, padding=[2, 1, 2, 1])

    def flrelu():
        x, b = _leaf(2, 4, 8, 8), _leaf(4)
        f = gankern.setup_filter([1, 3, 3, 1])
        return (x, b), lambda: gankern.filtered_lrelu(x, f, f, b, up=2, down=2, padding=1, clamp=2.0)

    def modconv():
        x, w, s = _leaf(2, 4, 6, 6), _leaf(5, 4, 3, 3), _leaf(2, 4, positive=True)
        bias = _leaf(5)
        return (x, w, s, bias), lambda: gankern.modulated_conv2d(x, w, s, padding=1, bias=bias, act="lrelu",
                                                                  fused_modconv=True)

    def mbstd():
        x = _leaf(4, 3, 4, 4)
        return (x,), lambda: gankern.minibatch_std(x, group_size=2)

    def noise_loss():
        x0, mo, n = _leaf(2, 3, 4, 4), _leaf(2, 3, 4, 4), _leaf(2, 3, 4, 4)
        t = torch.tensor([3, 7])
        ac = torch.linspace(0.99, 0.1, 10)

        def call():
            xt = gankern.add_noise(x0, n, t, ac)
            return xt, gankern.diffusion_loss(mo, x0, n, t, ac, prediction_type="v_prediction")
        return (x0, mo, n), call

    return [("bias_act", {"bias_act"}, bias_act),
            ("group_norm_act", {"group_norm_act"}, group_norm),
            ("batch_norm_act", {"batch_norm_act"}, batch_norm),
            ("layer_norm", {"layer_norm"}, layer_norm),
            ("geglu", {"geglu"}, geglu),
            ("vae", {"reparameterize_kl"}, vae),
            ("upfirdn2d", {"upfirdn2d"}, upfirdn),
            ("filtered_lrelu", {"filtered_lrelu"}, flrelu),
            ("modulated_conv2d", {"modconv_epilogue"}, modconv),
            ("minibatch_std", {"minibatch_std"}, mbstd),
            ("diffusion", {"add_noise", "diffusion_loss"}, noise_loss)]


CASES = _cases()


def _flat(out):
    return [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, torch.Tensor)]


def _run(make, fast: bool, grad: bool):
    torch.manual_seed(0)
    leaves, call = make()
    with _op.fast_path(fast):
        if not grad:
            with torch.no_grad():
                return _flat(call()), []
        outs = _flat(call())
        loss = sum((o.double() * torch.linspace(-1, 1, o.numel(), dtype=torch.float64).reshape(o.shape)).sum()
                   for o in outs)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [o.detach() for o in outs], [g for g in grads]


def _bitwise(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        if u is None or v is None:
            assert u is None and v is None
            continue
        assert u.dtype == v.dtype and u.shape == v.shape and u.stride() == v.stride()
        assert torch.equal(u.reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8))  # bits (NaN too)


@pytest.mark.parametrize("name,ops,make", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_fast_path_matches_custom_op_bitwise(name, ops, make, grad, counted):
    slow_out, slow_grads = _run(make, fast=False, grad=grad)
    assert not counted, "the custom-op path must not touch the fast path"
    fast_out, fast_grads = _run(make, fast=True, grad=grad)
    assert ops <= set(counted), f"fast path not taken for {ops - set(counted)}"
    _bitwise(fast_out, slow_out)
    _bitwise(fast_grads, slow_grads)


def test_no_grad_inputs_give_no_graph(counted):
    x = torch.randn(2, 4, 3, 3)
    y = gankern.bias_act(x, torch.randn(4), act="relu")
    assert y.grad_fn is None and not y.requires_grad and counted["bias_act"] == 1
    with torch.inference_mode():
        y = gankern.group_norm_act(torch.randn(2, 4, 3, 3, requires_grad=True), 2)
    assert y.is_inference() and counted["group_norm_act"] == 1


def test_gradient_graph_is_the_ops_own():
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    y, mean, rstd = gankern.ops.norm._group_norm_act(x, 2, None, None, 1e-5, "silu", 1.0, None, None, None, None)
    assert y.requires_grad and not mean.requires_grad and not rstd.requires_grad  # mark_non_differentiable kept
    with _op.fast_path(False):
        y2, m2, r2 = gankern.ops.norm._group_norm_act(x, 2, None, None, 1e-5, "silu", 1.0, None, None, None, None)
    assert not m2.requires_grad and torch.equal(y, y2)


@pytest.mark.parametrize("act", ["lrelu", "swish"])
def test_double_backward_through_the_fast_path(act, counted):
    """R1-style second-order gradients: backward ops run through the same wrapper, with graphs."""
    def grads(fast):
        torch.manual_seed(1)
        x = torch.randn(3, 5, 4, 4, requires_grad=True)
        b = torch.randn(5, requires_grad=True)
        with _op.fast_path(fast):
            y = gankern.bias_act(x, b, act=act)
            (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
            gg = torch.autograd.grad(gx.square().sum(), (x, b))
        return [gx.detach(), *gg]
    slow = grads(False)
    counted.clear()
    fast = grads(True)
    assert counted.get("bias_act_backward", 0) >= 2  # first backward, and d/d(dy) of the second
    _bitwise(fast, slow)


def test_double_backward_without_a_formula_raises_as_before():
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    for fast in (False, True):
        with _op.fast_path(fast):
            y = gankern.group_norm_act(x, 2)
            (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
            with pytest.raises(RuntimeError):
                torch.autograd.grad(gx.sum(), x)


def test_ddim_step_with_guidance(counted):
    def step(fast):
        torch.manual_seed(2)
        s = DDIMScheduler(num_train_timesteps=100)
        s.set_timesteps(10)
        sample, out = torch.randn(2, 4, 8, 8), torch.randn(4, 4, 8, 8)
        with _op.fast_path(fast):
            r = s.step(out, s.timesteps[3], sample, eta=0.5, guidance_scale=5.0, guidance_rescale=0.7,
                       generator=torch.Generator().manual_seed(4))
        return [r.prev_sample, r.pred_original_sample]
    slow = step(False)
    fast = step(True)
    assert {"diffusion_step", "guidance_rescale_factors"} <= set(counted)
    _bitwise(fast, slow)


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_not_taken_under_a_dispatch_mode(counted):
    x, b = torch.randn(2, 4, 3), torch.randn(4)
    with _Recorder() as rec:
        gankern.bias_act(x, b, act="lrelu")
    assert "gankern.bias_act.default" in rec.ops and not counted


def test_not_taken_for_fake_meta_or_subclass_tensors(counted):
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        y = gankern.bias_act(torch.randn(2, 4, 3), act="relu")
    assert y.shape == (2, 4, 3)
    y = gankern.bias_act(torch.randn(2, 4, 3, device="meta"), act="relu")
    assert y.device.type == "meta"

    class Sub(torch.Tensor):
        pass
    gankern.bias_act(torch.randn(2, 4, 3).as_subclass(Sub), act="relu")
    assert not counted


def test_not_taken_under_compile(counted):
    x, b = torch.randn(2, 4, 3), torch.randn(4)
    f = torch.compile(lambda x, b: gankern.bias_act(x, b, act="lrelu"), fullgraph=True, backend="eager")
    y = f(x, b)
    assert not counted
    torch.testing.assert_close(y, gankern.bias_act(x, b, act="lrelu"), rtol=0, atol=0)
    assert counted["bias_act"] == 1


def test_not_taken_under_vmap_or_forward_ad(counted):
    x = torch.randn(3, 2, 4)
    want = gankern.bias_act(x, act="relu")
    counted.clear()
    y = torch.vmap(lambda t: gankern.bias_act(t, act="relu"))(x)  # torch's per-sample fallback
    assert torch.equal(y, want) and not counted
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():  # whatever torch.library does with a tangent (today: drops it), not us
        y = gankern.bias_act(fwAD.make_dual(x, torch.ones_like(x)), act="relu")
    assert torch.equal(fwAD.unpack_dual(y).primal, want) and not counted


def test_keyword_arguments_go_through_the_custom_op(counted):
    x = torch.randn(2, 4, 3)
    op = gankern.ops.bias_act._bias_act
    y = op(x, None, 1, "relu", 0.2, math.sqrt(2), clamp=None)
    assert not counted
    assert torch.equal(y, op(x, None, 1, "relu", 0.2, math.sqrt(2), None)) and counted["bias_act"] == 1
    assert op.overload is torch.ops.gankern.bias_act.default


def test_operand_check_runs_except_for_unchecked_eager_calls(counted):
    """check= runs on torch.ops calls and plain Op calls; Op.unchecked skips it only on the fast path."""
    from gankern.ops import diffusion as D
    op = D._guidance_rescale_factors
    bad = torch.randn(3, 2)  # guidance needs an even batch
    with pytest.raises(ValueError, match="2\\*B samples"):
        torch.ops.gankern.guidance_rescale_factors(bad, 2.0, 0.5)
    with pytest.raises(ValueError, match="2\\*B samples"):
        op(bad, 2.0, 0.5)
    with _op.fast_path(False), pytest.raises(ValueError, match="2\\*B samples"):
        op.unchecked(bad, 2.0, 0.5)
    good = torch.randn(4, 2, 3)
    assert torch.equal(op.unchecked(good, 2.0, 0.5), torch.ops.gankern.guidance_rescale_factors(good, 2.0, 0.5))
    assert counted["guidance_rescale_factors"] == 2  # op(bad) and op.unchecked(good)


def test_guidance_rescale_factors_in_python_floats_are_torchs_bits():
    """The CPU computes the per-sample rescale factors in Python floats (cheaper than a dozen torch
    ops on [B] tensors): the same IEEE operations, so the same bits; zero variance falls back to
    torch's inf/NaN."""
    from gankern.ops import diffusion as D

    def torch_formula(sums, S, r):
        sc, sc2, sm, sm2 = sums.unbind(1)
        var_c = (sc2 - sc * sc / S) / (S - 1)
        var_m = (sm2 - sm * sm / S) / (S - 1)
        return ((1 - r) + r * (var_c / var_m).sqrt()).float()

    g = torch.Generator().manual_seed(5)
    for S in (2, 3, 4096, 12345):
        sums = torch.rand(64, 4, dtype=torch.float64, generator=g) * torch.tensor([1.0, 10, 1, 10], dtype=torch.float64)
        sums[:, 1] += sums[:, 0] ** 2 / S  # non-negative variance
        sums[:, 3] += sums[:, 2] ** 2 / S + 1e-3
        for r in (0.0, 0.3, 0.7, 1.0):
            got, want = D._rescale_from_sums(sums, S, r), torch_formula(sums, S, r)
            assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    flat = torch.tensor([[1.0, 2.0, 2.0, 4.0]], dtype=torch.float64)  # var_m = 0
    got, want = D._rescale_from_sums(flat, 2, 0.5), torch_formula(flat, 2, 0.5)
    torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)


def test_aliasing_output_is_caught_where_checked():
    """An op returning its input: torch.library always raises; the fast path raises when
    check_aliasing is on (as in this suite) and, off (production), returns the alias unchecked."""
    @_op.custom_op("gankern_test::returns_input")
    def returns_input(x: torch.Tensor) -> torch.Tensor:
        return x

    x = torch.randn(3)
    assert _op.check_aliasing  # tests/conftest.py
    with pytest.raises(RuntimeError, match="may not alias any inputs"):
        returns_input(x)
    with _op.fast_path(False), pytest.raises(RuntimeError, match="may not alias any inputs"):
        returns_input(x)
    _op.check_aliasing = False
    try:
        assert returns_input(x) is x
    finally:
        _op.check_aliasing = True
