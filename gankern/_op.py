"""How every gankern op is declared: a torch.library custom op with an eager fast path.

    @_op.custom_op("gankern::foo")
    def _foo(x: Tensor, alpha: float) -> Tensor: ...
    _foo.register_fake(...); _foo.register_autograd(backward, setup_context=setup)
    y = _foo(x, 0.2)                  # what the family's functional API and backward call

The op is registered with `torch.library.custom_op` exactly as before, so `torch.ops.gankern.foo`
exists and torch.compile, export, opcheck, FakeTensor and dispatch-mode recording see it. What
`custom_op` adds is the call: torch.library's Python path (default filling, the generated
autograd.Function, redispatch, the backend wrapper) costs 10-30 us per call, more than a small
kernel. So in plain eager mode a call skips it and does what that path would do, directly:

- no gradient wanted (grad mode off, or no tensor argument requires grad): call the op's
  function (its backend dispatch);
- a gradient wanted: one torch.autograd.Function built from the op's own `setup_context` and
  `backward` (the formula stays written once). Backward functions call their backward ops
  through the same wrapper, so double backward records a graph as before; an op without an
  autograd formula goes through the custom op, which raises as torch does.

"Plain eager" is checked per call (`_eager`); anything else goes through the custom op:
torch.compile/dynamo tracing, an active TorchDispatchMode (FakeTensor, make_fx/export, the
contract suite's recorder) or TorchFunctionMode (including `torch.set_default_device`), a
functorch transform (vmap, grad, functionalize), forward-mode AD (a dual level), the JIT tracer,
keyword arguments or omitted defaults, and any tensor argument that is not exactly a
torch.Tensor or nn.Parameter (subclasses, FakeTensor) or is on the meta device.

What the fast path does not repeat: torch.library's check of each argument against the schema
(an int for a float...). Only gankern's own code calls the op objects, after the functional API's
validation; `torch.ops.gankern.*`, which users may call, is unchanged. torch.library's check that
no output aliases an input or another output (a rule for the op's author: every gankern backend
returns fresh tensors) runs when `check_aliasing` is set, as the test suite sets it
(tests/conftest.py): it costs ~1.5 us a call, as much as the rest of the fast path.
"""
from __future__ import annotations

import contextlib
import functools
import inspect

import torch
from torch._library.utils import _c_check_aliasing_constraint
from torch.autograd import forward_ad

# Argument types taken as plain: a subclass may define __torch_function__/__torch_dispatch__.
_PLAIN = frozenset({torch.Tensor, torch.nn.Parameter})

_is_compiling = torch.compiler.is_compiling
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_mode = torch._C._is_torch_function_mode_enabled
_functorch = torch._C._are_functorch_transforms_active
_tracing = torch._C._get_tracing_state
_grad_enabled = torch._C.is_grad_enabled
_any_requires_grad = torch._C._any_requires_grad

# Calls taken by the fast path, per op name, while count_calls is set (tests check that it is taken
# in eager and only there).
calls: dict[str, int] = {}
count_calls = False

# False: every call goes through torch.library (tests compare both paths; benchmarks A/B them).
enabled = True

# True: the fast path also runs torch.library's output-aliasing check (module doc; tests set it).
check_aliasing = False


@contextlib.contextmanager
def fast_path(on: bool):
    """Turn the eager fast path on or off inside the block (process-wide: for tests and benchmarks)."""
    global enabled
    old, enabled = enabled, on
    try:
        yield
    finally:
        enabled = old


def _eager(args, tensor_positions) -> bool:
    """True when torch.library's custom-op path would do nothing but run the op's own code.
    tensor_positions: the indices of the schema's Tensor arguments (the others cannot hold one)."""
    # is_compiling first: dynamo folds it to True and never traces the C calls after it
    if _is_compiling() or _dispatch_modes() or _function_mode() or _functorch() or _tracing() \
            or forward_ad._current_level >= 0:
        return False
    for i in tensor_positions:
        a = args[i]
        if a is not None and (type(a) not in _PLAIN or a.is_meta):
            return False
    return True


class Op:
    """A gankern custom op: `torch.ops.gankern.<name>` plus the eager fast path (module doc).
    `register_fake` / `register_autograd` register on the custom op as torch.library's do."""

    def __init__(self, qualname: str, fn, check=None):
        self._impl = fn  # the op without its operand check (Op.unchecked)
        if check is not None:
            @functools.wraps(fn)
            def checked(*args):
                check(*args)
                return impl(*args)
            # the schema is inferred from fn's signature, its string annotations evaluated where fn lives
            checked.__signature__ = inspect.signature(fn, eval_str=True)
            impl, fn = fn, checked
        self.custom = torch.library.custom_op(qualname, mutates_args=())(fn)
        self.overload = self.custom._opoverload
        self.qualname = qualname
        self.name = qualname.split("::")[1]
        self._fn = fn
        self._nparams = len(inspect.signature(self._impl).parameters)
        self._function = None  # the autograd.Function, once register_autograd is called
        schema_args = self.overload._schema.arguments
        tensor_or_none = torch._C.OptionalType.ofTensor()
        self._tensor_positions = tuple(i for i, a in enumerate(schema_args) if a.type.isSubtypeOf(tensor_or_none))
        if any("Tensor" in str(a.type) for i, a in enumerate(schema_args) if i not in self._tensor_positions):
            raise TypeError(f"{qualname}: tensor-list arguments are not supported by gankern._op (the eager "
                            "check looks at Tensor and Optional[Tensor] arguments only)")

    def register_fake(self, fn):
        return self.custom.register_fake(fn)

    def register_autograd(self, backward, *, setup_context, materialize_grads: bool = True):
        """As torch.library's. materialize_grads=False: for a backward that never reads the
        gradients of some outputs (statistics marked non-differentiable): the fast path's Function
        then passes None for them instead of zeros autograd would allocate and fill (a kernel launch
        each on a GPU). torch.library's path still passes zeros; such a backward sees no difference."""
        self.custom.register_autograd(backward, setup_context=setup_context)
        run = self._run

        # setup_context is called inside forward (as torch.library's generated Function does), not
        # given as Function.setup_context: with one, Function.apply binds the arguments with
        # inspect.signature on every call (~10 us).
        def forward(ctx, *args):
            if not materialize_grads:
                ctx.set_materialize_grads(False)
            out = run(*args)
            setup_context(ctx, args, out)
            return out

        self._function = type(f"{self.name}_fast", (torch.autograd.Function,), {
            "forward": staticmethod(forward),
            "backward": staticmethod(backward),
        })

    def __call__(self, *args, **kwargs):
        return self._call(self._fn, args, kwargs)

    def unchecked(self, *args):
        """The op, for a caller that has validated the operands itself (a functional API that
        builds them): in eager mode without a gradient the op's `check` is skipped; in every other
        case this is calling the op."""
        return self._call(self._impl, args, None)

    def _call(self, fn, args, kwargs):
        # every argument positional (gankern's callers pass them all): else torch.library binds them
        if kwargs or len(args) != self._nparams or not enabled or not _eager(args, self._tensor_positions):
            return self.overload(*args, **(kwargs or {}))
        if count_calls:
            calls[self.name] = calls.get(self.name, 0) + 1
        if _grad_enabled() and _any_requires_grad(*args):
            if self._function is None:  # no formula: torch.library's own error
                return self.overload(*args)
            return self._function.apply(*args)
        out = fn(*args)
        if check_aliasing:
            _c_check_aliasing_constraint(self.qualname, args, {}, out)
        return out

    def _run(self, *args):
        """The op's own function (check and backend dispatch), with torch.library's check that no
        output aliases an input or another output when `check_aliasing` is set."""
        out = self._fn(*args)
        if check_aliasing:
            _c_check_aliasing_constraint(self.qualname, args, {}, out)
        return out

    def __repr__(self) -> str:
        return f"<gankern op {self.name}: torch.ops.gankern.{self.name} with an eager fast path>"


def custom_op(qualname: str, *, check=None):
    """Decorator replacing `torch.library.custom_op(qualname, mutates_args=())` (module doc).
    Every gankern op is functional (mutates nothing): an op that mutates would need torch.library's
    version-counter bookkeeping, which the fast path does not do.

    check: optional `check(*args)` raising for bad operands, run before the op's function on every
    call (torch.ops.gankern.* are public) except `Op.unchecked` calls in eager mode, where the
    functional API has validated what it built."""
    def deco(fn) -> Op:
        return Op(qualname, fn, check)
    return deco
