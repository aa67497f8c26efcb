"""The contract suite: every registered case (tests/contract_cases/) through every check of
tests/contract.py, on every backend that can run here. See tests/contract.py for what each check
means and how a family registers its ops."""
import pytest
import torch

from conftest import assert_close
from contract import (TARGET_IDS, TARGETS, apply_layout, as_float64, layouts_for, leaves,
                      nonfinite_variants, outputs, record_ops, run, skip_reason)
from contract_cases import all_cases

import gankern

CASES = all_cases()


def _tensors(case, shape=None, device="cpu"):
    t = case.make(tuple(shape or case.shape), torch.Generator().manual_seed(0))
    return {k: v.to(device) for k, v in t.items()}


def _skip(case, backend, device="cpu"):
    why = skip_reason(case, backend, device)
    if why is not None:
        pytest.skip(why)


def _reference(case, tensors, grad=True, fn=None):
    return run(case, "reference", as_float64(tensors), grad, fn=fn)


def _compare(case, got, want, what, dtype=torch.float32):
    outs, grads = got
    routs, rgrads = want
    assert len(outs) == len(routs), f"{what}: {len(outs)} outputs, the reference has {len(routs)}"
    for i, (o, r) in enumerate(zip(outs, routs)):
        assert_close(o, r, dtype, what=f"{what}: output {i}")
    for k, rg in rgrads.items():
        g = grads.get(k)
        if rg is None:
            assert g is None or not g.any(), f"{what}: {k} has a gradient the reference does not"
            continue
        assert g is not None, f"{what}: {k} requires grad but got no gradient"
        assert g.shape == rg.shape, f"{what}: grad of {k} has shape {tuple(g.shape)}, expected {tuple(rg.shape)}"
        assert_close(g, rg, dtype, what=f"{what}: grad of {k}")


def _ids(params):
    return [str(p) for p in params]


LAYOUT_PARAMS = [(c, lay) for c in CASES for lay in layouts_for(c)]


@pytest.mark.parametrize("backend,device", TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("case,layout", LAYOUT_PARAMS, ids=[f"{c}-{lay}" for c, lay in LAYOUT_PARAMS])
def test_layouts(case, layout, backend, device):
    """Every dense layout, forward and gradients, against the float64 reference."""
    _skip(case, backend, device)
    t = apply_layout(case, _tensors(case, device=device), layout)
    _compare(case, run(case, backend, t, grad=True), _reference(case, t), f"{case} {layout} on {backend}")


EMPTY_PARAMS = [(c, d) for c in CASES for d in range(len(c.shape))]


@pytest.mark.parametrize("backend,device", TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("case,dim", EMPTY_PARAMS, ids=[f"{c}-dim{d}" for c, d in EMPTY_PARAMS])
def test_empty(case, dim, backend, device):
    """A size-0 dimension: outputs as the reference's, gradients of each input's shape (zero when
    every output is empty), on every backend."""
    _skip(case, backend, device)
    shape = list(case.shape)
    shape[dim] = 0
    t = _tensors(case, shape, device)
    if case.empty_refused(tuple(shape)):
        with pytest.raises(ValueError):
            run(case, backend, t, grad=True)
        return
    got = run(case, backend, t, grad=True)
    want = _reference(case, t)
    _compare(case, got, want, f"{case} with shape {shape} on {backend}")
    if all(o.numel() == 0 for o in got[0]):
        for k, g in got[1].items():
            assert g is not None and not g.any(), f"{case}: grad of {k} must be zero for an empty output"


OPCHECK_PARAMS = [(c, lay) for c in CASES for lay in layouts_for(c)]


@pytest.mark.parametrize("case,layout", OPCHECK_PARAMS, ids=[f"{c}-{lay}" for c, lay in OPCHECK_PARAMS])
def test_opcheck(case, layout):
    """torch.library.opcheck of every custom op the call runs (forward and backward) on each backend:
    the schema and the fake kernel (its output strides must be the real ones) with every layout; the
    autograd registration and AOT dispatch (the slow utilities, backend-independent) with the
    contiguous layout, on the default backend."""
    ran = 0
    for backend, device in TARGETS:
        if skip_reason(case, backend, device):
            continue
        t = apply_layout(case, _tensors(case, device=device), layout)
        with gankern.use_backend(backend):
            calls = record_ops(case, t)
            assert calls, f"{case} ran no gankern custom op"
            for func, args, kwargs in calls:
                torch.library.opcheck(func, args, kwargs, test_utils=("test_schema", "test_faketensor"))
        ran += 1
    assert ran
    if layout == "contiguous":
        t = _tensors(case)
        for func, args, kwargs in record_ops(case, t):
            torch.library.opcheck(func, args, kwargs)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_compile_fullgraph(case):
    """torch.compile(fullgraph=True) of the call with every layout in one graph (one compilation per
    case keeps CI time in check), each output consumed by a multiplication (Inductor asserts the
    strides the fake kernels state); compiled once, run on every backend, forward and backward.
    Inductor's RNG is set to eager's, so a seed drawn in the graph (seed=None) is eager's."""
    torch._dynamo.reset()
    base = _tensors(case)
    fn = case.traceable(base)
    names = list(base)
    n_layouts = len(layouts_for(case))

    def body(**flat):
        outs = []
        for i in range(n_layouts):
            outs += [o * 2 for o in outputs(fn(**{k: flat[f"{k}_{i}"] for k in names}))]
        return outs

    def flat_inputs(device):
        variants = [apply_layout(case, _tensors(case, device=device), lay) for lay in layouts_for(case)]
        return {f"{k}_{i}": v[k] for i, v in enumerate(variants) for k in names}

    class _FlatCase:  # run() on the flattened arguments, with the case's differentiation rules
        no_grad = {f"{k}_{i}": r for k, r in case.no_grad.items() for i in range(n_layouts)}

        @staticmethod
        def grad_args(tensors):
            return [k for k, t in tensors.items() if t.is_floating_point() and k not in _FlatCase.no_grad]

        call = staticmethod(body)

    with torch._inductor.config.patch(fallback_random=True):
        compiled = torch.compile(body, fullgraph=True)
        for backend, device in TARGETS:
            if skip_reason(case, backend, device):
                continue
            flat = flat_inputs(device)
            want = run(_FlatCase, "reference", as_float64(flat), grad=True)
            _compare(case, run(_FlatCase, backend, flat, grad=True, fn=compiled), want,
                     f"compiled {case} on {backend} ({device})")


@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_export(case, strict):
    """torch.export of the call, strict and non-strict; the exported program gives the eager result."""
    t = _tensors(case)
    fn = case.traceable(t)

    class M(torch.nn.Module):
        def forward(self, **kw):
            return tuple(outputs(fn(**kw)))

    with torch.no_grad():
        torch.manual_seed(1234)
        ep = torch.export.export(M(), (), t, strict=strict)
        torch.manual_seed(1234)
        got = outputs(ep.module()(**t))
        torch.manual_seed(1234)
        want = outputs(fn(**t))
    assert len(got) == len(want)
    for o, w in zip(got, want):
        assert_close(o, w, what=f"exported {case}")


GRAD_CASES = [c for c in CASES if c.grad_args(_tensors(c))]


@pytest.mark.parametrize("case", GRAD_CASES, ids=_ids(GRAD_CASES))
def test_reference_gradcheck(case):
    """The reference backend's gradients (the custom ops' autograd formulas) against finite
    differences in float64, for every differentiable argument."""
    t = as_float64(_tensors(case, [min(s, 2) for s in case.shape]))
    names = case.grad_args(t)
    with gankern.use_backend("reference"):
        torch.manual_seed(1234)
        probe = outputs(case.call(**leaves(case, t, True)))
        keep = [i for i, o in enumerate(probe) if o.requires_grad]
        assert keep, f"{case}: no output depends differentiably on {names}"

        def f(*args):
            kw = dict(t)
            kw.update(zip(names, args))
            torch.manual_seed(1234)
            outs = outputs(case.call(**kw))
            return tuple(outs[i] for i in keep)

        args = [t[k].detach().clone().requires_grad_() for k in names]
        assert torch.autograd.gradcheck(f, args, fast_mode=True)


REFUSED = [(c, k) for c in CASES for k in c.no_grad]


@pytest.mark.parametrize("case,arg", REFUSED, ids=[f"{c}-{k}" for c, k in REFUSED])
def test_documented_no_grad_is_refused(case, arg):
    """A floating argument documented as not differentiable raises ValueError naming it when it
    requires grad (never a silently missing gradient), and works under torch.no_grad()."""
    t = _tensors(case)
    t[arg] = t[arg].detach().requires_grad_()
    with pytest.raises(ValueError, match=arg):
        case.call(**t)
    with torch.no_grad():
        case.call(**t)


ARG_PARAMS = [(c, k) for c in CASES for k in _tensors(c)]
DEVICE_PARAMS = [(c, k) for c, k in ARG_PARAMS if len(_tensors(c)) > 1]  # one tensor alone: any device works


@pytest.mark.parametrize("case,arg", DEVICE_PARAMS, ids=[f"{c}-{k}" for c, k in DEVICE_PARAMS])
def test_device_mismatch(case, arg):
    """A tensor argument on another device (meta) than the others raises ValueError naming it."""
    t = _tensors(case)
    t[arg] = t[arg].to("meta")
    with pytest.raises(ValueError, match=arg):
        case.call(**t)


@pytest.mark.parametrize("case,arg", ARG_PARAMS, ids=[f"{c}-{k}" for c, k in ARG_PARAMS])
def test_dtype_mismatch(case, arg):
    """An integer tensor for a floating argument (a floating one for an integer argument) raises
    TypeError naming it; float16 mixed into float32 arguments works (as the reference backend does on
    the same tensors) or raises TypeError/ValueError naming it."""
    t = _tensors(case)
    wrong = dict(t)
    wrong[arg] = t[arg].round().long() if t[arg].is_floating_point() else t[arg].float()
    with pytest.raises(TypeError, match=arg):
        case.call(**wrong)
    if not t[arg].is_floating_point():
        return
    mixed = dict(t)
    mixed[arg] = t[arg].half()
    try:
        got = run(case, None, mixed, grad=False)
    except (TypeError, ValueError) as e:
        assert arg in str(e), f"{case}: the error for a float16 {arg} does not name it: {e}"
        return
    want = run(case, "reference", mixed, grad=False)  # the same dtypes: the specification of mixing them
    for o, r in zip(got[0], want[0]):
        assert_close(o, r, torch.float16, what=f"{case} with float16 {arg}")


NONFINITE_PARAMS = [(c, k) for c in CASES
                    for k in (c.nonfinite_args if c.nonfinite_args is not None else c.floating(_tensors(c)))]


@pytest.mark.parametrize("backend,device", TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("case,arg", NONFINITE_PARAMS, ids=[f"{c}-{k}" for c, k in NONFINITE_PARAMS])
def test_nonfinite(case, arg, backend, device):
    """NaN, +inf and -inf in one element of each floating input: every backend gives what the float64
    reference gives (the same NaN and infinity pattern, the same finite values)."""
    _skip(case, backend, device)
    t = _tensors(case, device=device)
    # cuDNN off: its fast algorithms (Winograd, FFT) can spread a NaN past the outputs that read it (a
    # property of cuDNN's algorithm choice, not of gankern's ops); torch's direct convolution does not.
    with torch.backends.cudnn.flags(enabled=False):
        _nonfinite(case, arg, backend, t)


def _nonfinite(case, arg, backend, t):
    for label, bad in nonfinite_variants(t[arg]):
        u = dict(t)
        u[arg] = bad
        got, _ = run(case, backend, u, grad=False)
        want, _ = _reference(case, u, grad=False)
        for i, (o, r) in enumerate(zip(got, want)):
            assert_close(o, r, what=f"{case} with {arg}[0] = {label} on {backend}: output {i}")


def test_every_family_registered():
    """A guard that no family's cases went missing (and unique ids, so every test id is one case)."""
    families = {c.ops[0] for c in CASES}
    assert {"bias_act", "group_norm_act", "batch_norm_act", "reparameterize", "add_noise", "diffusion_loss",
            "diffusion_step"} <= families
    assert len({c.id for c in CASES}) == len(CASES)
