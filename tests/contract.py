"""The contract every public op keeps at the edges, checked the same way for every op family.

A family registers its ops' sample inputs as `Case`s in `tests/contract_cases/<family>.py` (a
module-level list `CASES`); `tests/test_contract.py` runs every check below on every case and every
backend that can run here. A new family joins by adding that one file.

A case is a call of the public API, `call(**tensors)`, with the non-tensor arguments bound in, and a
`make(shape, gen)` that builds the tensors for a sample shape (small: the checks run the Triton
interpreter and the CUDA emulator). The checks:

- layouts: every dense layout of the full-size tensors (contiguous, channels_last, permuted, a
  storage offset, mixed layouts, expanded where the case allows it) against the float64 reference,
  forward and gradients;
- empty tensors: each dimension of the sample shape set to 0: outputs as the reference's (empty
  where they are empty), gradients of the input's shape (zero when every output is empty);
- opcheck: every custom op the call runs (forward and backward, recorded by a dispatch mode), with
  every layout;
- torch.compile(fullgraph=True), forward and backward, every layout in one graph (one compilation
  per case: compiling is the slow part): the compiled graph asserts that each custom op's output
  strides are the ones its fake kernel stated, on every backend;
- torch.export, strict and non-strict;
- gradients: every floating tensor argument gets its gradient (kernels against the reference, the
  reference against finite differences in float64), or is listed in `no_grad` and refused with a
  ValueError naming it when it requires grad;
- device and dtype: each tensor argument on another device (meta) raises ValueError naming it; an
  integer tensor for a floating argument (a floating one for an integer argument) raises TypeError
  naming it; a float16 tensor mixed into float32 arguments either works or raises naming it;
- NaN, +inf and -inf in each floating input: every backend propagates them as the float64 reference.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gankern
from gankern.backends import why_not

from conftest import DEVICES, KERNEL_BACKENDS as BACKENDS

# (backend, device) pairs: CPU tensors on every backend (Triton interpreted and the CUDA emulator
# where there is no GPU), and CUDA tensors where there is one.
TARGETS = [(b, d) for d in DEVICES for b in BACKENDS]
TARGET_IDS = [b if d == "cpu" else f"{b}-{d}" for b, d in TARGETS]


@dataclass
class Case:
    """One public call under contract.

    id: test id. call: `call(**tensors)` -> a tensor or a tuple of tensors. make: `make(shape, gen)`
    -> {name: tensor} (float32 floating tensors, contiguous). shape: the default sample shape (empty
    variants set each dim to 0). ops: the backend ops the call dispatches to (backends that cannot
    run one are skipped). layout_args: the full-size tensors laid out in each dense layout (the first
    one is "the input", which "mixed" lays out alone). int_args: integer tensor arguments.
    host_args: arguments that may live on the CPU whatever the device (schedule tables).
    no_grad: floating arguments documented as not differentiable (-> why): refused when they require
    grad. expand: which layout_args may be expanded (a broadcast along dim 0).
    empty_refused: shape -> True where the op documents a ValueError for that empty shape.
    nonfinite_args: the floating arguments that get NaN/inf (default: every floating argument).
    trace: for calls that keep Python state (schedulers), a factory of the function compile and
    export trace (see traceable)."""
    id: str
    call: Callable
    make: Callable
    shape: tuple
    ops: tuple
    layout_args: tuple = ()
    int_args: tuple = ()
    host_args: tuple = ()
    no_grad: dict = field(default_factory=dict)
    expand: tuple = ()
    empty_refused: Callable = lambda shape: False
    nonfinite_args: tuple | None = None
    trace: Callable | None = None

    def traceable(self, tensors: dict) -> Callable:
        """What compile/export trace: `call` itself, or (stateful schedulers) `trace(tensors)`, a
        function of the same tensors with the state prepared outside."""
        return self.call if self.trace is None else self.trace(tensors)

    def __str__(self):
        return self.id

    def floating(self, tensors):
        return [k for k, t in tensors.items() if t.is_floating_point()]

    def grad_args(self, tensors):
        return [k for k in self.floating(tensors) if k not in self.no_grad]


# ---- layouts -----------------------------------------------------------------------------------

_CONSTANTS: dict = {}


def constant(t: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A case's constant (a filter: a buffer in StyleGAN's layers) on like's device, copied once per
    device and dtype. Copying it in every call would put a host-to-device copy, which synchronizes,
    into the call that tests/test_gpu_sync.py checks."""
    key = (id(t), like.device, dtype or t.dtype)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = t.to(like.device, dtype or t.dtype)
    return _CONSTANTS[key]


def _permuted(t):
    """Same values, dense, last two dims stored transposed (x.transpose(2, 3) of a contiguous tensor)."""
    if t.ndim < 2:
        return t
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def _offset(t):
    """Contiguous, but starting 3 elements into its storage (misaligned for 16-byte vectors)."""
    buf = torch.empty(t.numel() + 3, dtype=t.dtype, device=t.device)
    out = buf[3:].view(t.shape)
    out.copy_(t)
    return out


def _channels_last(t):
    if t.ndim == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if t.ndim == 5:
        return t.contiguous(memory_format=torch.channels_last_3d)
    return t.movedim(1, -1).contiguous().movedim(-1, 1) if t.ndim >= 3 else t


def _expanded(t):
    """Broadcast along dim 0: every sample the first one (stride 0)."""
    return t[:1].expand(t.shape) if t.ndim and t.shape[0] > 1 else t


LAYOUTS = ("contiguous", "channels_last", "permuted", "offset", "mixed", "expanded")


def apply_layout(case: Case, tensors: dict, layout: str) -> dict:
    out = dict(tensors)
    fn = {"contiguous": lambda t: t, "channels_last": _channels_last, "permuted": _permuted, "offset": _offset,
          "mixed": _channels_last, "expanded": _expanded}[layout]
    names = case.layout_args
    if layout == "mixed":
        names = names[:1]  # the input in channels_last, the other full-size tensors contiguous
    elif layout == "expanded":
        names = case.expand
    for k in names:
        if k in out and out[k] is not None:
            out[k] = fn(out[k])
    return out


def layouts_for(case: Case):
    return [lay for lay in LAYOUTS if lay != "expanded" or case.expand]


# ---- running -----------------------------------------------------------------------------------

def skip_reason(case: Case, backend: str, device="cpu", dtype=torch.float32) -> str | None:
    for op in case.ops:
        why = why_not(op, backend, device, dtype)
        if why is not None:
            return why
    return None


def outputs(result) -> list:
    """The floating tensors a call returned (a tensor, a tuple, or an object with prev_sample)."""
    if isinstance(result, torch.Tensor):
        result = (result,)
    return [t for t in result if isinstance(t, torch.Tensor) and t.is_floating_point()]


def leaves(case: Case, tensors: dict, grad: bool) -> dict:
    """Detached copies (the layout kept) that require grad where the case differentiates."""
    out = {}
    for k, t in tensors.items():
        if t is None:
            out[k] = None
            continue
        t = t.detach()
        if grad and t.is_floating_point() and k not in case.no_grad:
            t.requires_grad_(True)
        out[k] = t
    return out


def as_float64(tensors: dict) -> dict:
    return {k: (t.detach().double() if t is not None and t.is_floating_point() else t) for k, t in tensors.items()}


def run(case: Case, backend: str | None, tensors: dict, grad: bool, seed_grads: int = 1, fn=None):
    """(outputs, {name: grad}) of case (or fn) on backend (None: automatic choice). Gradients of the
    sum of each output times a fixed random weight. torch's generator is seeded first, so calls that
    draw a seed (seed=None) draw the same one on every backend."""
    ins = leaves(case, tensors, grad)
    ctx = gankern.use_backend(backend) if backend else contextlib.nullcontext()
    with ctx:
        torch.manual_seed(1234)
        outs = outputs((fn or case.call)(**ins))
        grads = {}
        if grad:
            wanted = [k for k in case.grad_args(ins)]
            diff = [o for o in outs if o.requires_grad]
            if wanted and diff:
                gen = torch.Generator().manual_seed(seed_grads)
                loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype)).sum()
                           for o in diff)
                got = torch.autograd.grad(loss, [ins[k] for k in wanted], allow_unused=True)
                grads = dict(zip(wanted, got))
            else:
                grads = {k: None for k in wanted}
    return [o.detach() for o in outs], grads


class RecordCustomOps(TorchDispatchMode):
    """Records every gankern custom op a call runs (args as passed), for opcheck."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "gankern":
            if not torch.is_grad_enabled():
                # a call inside backward: autograd runs it without a graph (no double backward),
                # so it is checked as it runs, on detached tensors
                args, kwargs = torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.detach(), (args, kwargs))
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def record_ops(case: Case, tensors: dict, grad: bool = True):
    ins = leaves(case, tensors, grad)
    with RecordCustomOps() as rec:
        outs = outputs(case.call(**ins))
        diff = [o for o in outs if o.requires_grad]
        if diff:
            sum(o.sum() for o in diff).backward()
    return rec.calls


def nonfinite_variants(t: torch.Tensor):
    """(label, tensor) with NaN, +inf or -inf at one element (the first, in memory order)."""
    for v in (math.nan, math.inf, -math.inf):
        u = t.detach().clone()
        if u.numel():
            u.view(-1)[0] = v
        yield f"{v}", u


def fused_step_trace(case_call):
    """trace factory of a scheduler case: runs the case once eagerly, captures the last
    gankern.ops.diffusion.fused_step call it makes (plan and keyword arguments) and returns a function
    of (model_output, sample) that makes only that call: what a compiled sampling loop contains."""
    from gankern.ops import diffusion as D

    def factory(tensors):
        seen = []
        real = D.fused_step

        def spy(model_output, sample, plan, **kw):
            seen.append((plan, kw))
            return real(model_output, sample, plan, **kw)

        D.fused_step = spy
        try:
            with torch.no_grad():
                case_call(**tensors)
        finally:
            D.fused_step = real
        plan, kw = seen[-1]
        kw = {**kw, "want_x0": True}

        def step(model_output, sample):
            return D.fused_step(model_output, sample, plan, **kw)
        return step
    return factory
