"""Backend registry and dispatch: which implementation of an op runs for given inputs.

Four backends implement every op behind one signature:
    reference  pure PyTorch (gankern/reference/): the specification, any device and dtype
    triton     Triton kernels (GPU; on CPU only under TRITON_INTERPRET=1, for tests)
    cpu        C++ kernels in gankern._C (own thread pool)
    cuda       CUDA kernels in gankern._cuda (on CPU only under GANKERN_CUDA_EMULATOR=1, for tests:
               the same kernels in gankern._cuda_emu, see csrc/emulator/runtime.h)

Choice, in order:
    1. a forced backend: `with gankern.use_backend("triton"):` or env GANKERN_BACKEND. If it cannot
       run these inputs, that is an error, never a silent substitute.
    2. CPU tensors: cpu, else reference.
       CUDA tensors: the backend measured fastest for the op on a GPU (PREFERRED), else triton,
       else cuda, else reference.
    A fallback from the first choice warns once per (op, reason).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from . import _native

NAMES = ("reference", "triton", "cpu", "cuda")

# Per-op choice for CUDA tensors, from GPU benchmarks (benchmarks/results/). An op missing here
# uses the default order. Keep this the only such table.
# H200, quick cases, one run each (benchmarks/results/h200-2026-11-2{9,30}/backends-cuda.json):
# - diffusion_step: a guided DDIM step at 16x4x128x128, 0.020 / 0.018 ms with cuda, 0.054 / 0.050 with triton;
# - filtered_lrelu: up2/down2 at 16x512x36x36 fp16, 6.2 ms with cuda, 76 with triton (both runs);
# - minibatch_std: G=4 fwd+bwd at 16x512x4x4, 0.40 / 0.23 ms with cuda, 0.48 / 0.48 with triton;
# - layer_norm: add+layer_norm at 8192x320 fp16, 0.043 ms with cuda, 0.052 with triton (11-30 only;
#   forward only: its backward keeps the default).
# bias_act and group_norm_act were faster with triton. upfirdn2d and modulated_conv split by case
# (triton: up=2, the 3x3 forward; cuda: down=2, the training layer's fwd+bwd) and geglu disagreed
# between the runs (triton 0.023 then 0.064 ms, cuda 0.044 both times): they keep the default.
PREFERRED: dict[str, str] = {"diffusion_step": "cuda", "filtered_lrelu": "cuda", "minibatch_std": "cuda",
                             "minibatch_std_backward": "cuda", "layer_norm": "cuda"}

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("gankern_backend", default=None)


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # why not available, or what it runs on

    def __str__(self) -> str:
        return f"{self.name:9s} {'yes' if self.available else 'no ':3s}  {self.reason}"


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_importable() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    try:
        import triton  # noqa: F401
    except Exception as e:  # broken install
        return False, f"triton failed to import ({e})"
    return True, f"triton {triton.__version__}"


def backends() -> dict[str, BackendStatus]:
    """Every backend: whether it can run here, and why (not)."""
    cuda_dev = torch.cuda.is_available()
    out = {"reference": BackendStatus("reference", True, f"PyTorch {torch.__version__}")}

    ok, why = _triton_importable()
    if ok and not (cuda_dev or triton_interpret()):
        ok, why = False, f"{why}, but no CUDA device (set TRITON_INTERPRET=1 to interpret kernels on CPU)"
    elif ok and not cuda_dev:
        why += ", interpreted on CPU (TRITON_INTERPRET=1)"
    out["triton"] = BackendStatus("triton", ok, why)

    if _native.cpu is not None:
        out["cpu"] = BackendStatus("cpu", True, f"gankern._C, {_native.cpu.get_max_threads()} threads")
    else:
        out["cpu"] = BackendStatus("cpu", False, _native.cpu_error)

    if _native.cuda_emulated():
        ok = _native.cuda is not None
        out["cuda"] = BackendStatus("cuda", ok, "gankern._cuda_emu, CUDA kernels emulated on CPU "
                                    "(GANKERN_CUDA_EMULATOR=1)" if ok else _native.cuda_error)
    elif _native.cuda is None:
        out["cuda"] = BackendStatus("cuda", False, _native.cuda_error or "gankern._cuda was not built")
    elif not cuda_dev:
        out["cuda"] = BackendStatus("cuda", False, "gankern._cuda is built, but PyTorch sees no CUDA device")
    else:
        out["cuda"] = BackendStatus("cuda", True, f"gankern._cuda for sm_{_native.cuda.compiled_archs()}")
    return out


@functools.lru_cache(maxsize=None)
def _available(name: str) -> BackendStatus:
    return backends()[name]


def _check_name(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(NAMES)}")
    return name


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force one backend for every gankern op inside the block (None: automatic choice).

    >>> with gankern.use_backend("reference"):
    ...     y = gankern.bias_act(x, b, act="lrelu")
    """
    token = _forced.set(None if name is None else _check_name(name))
    try:
        yield
    finally:
        _forced.reset(token)


def forced_backend() -> str | None:
    name = _forced.get()
    if name is None and os.environ.get("GANKERN_BACKEND"):
        name = _check_name(os.environ["GANKERN_BACKEND"].strip())
    return name


# ---------------------------------------------------------------------------------------------
# Registry: op -> backend -> implementation, with the (device type, dtype) pairs it supports.

@dataclass(frozen=True)
class Impl:
    fn: Callable
    cpu_dtypes: frozenset
    cuda_dtypes: frozenset

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        if device.type == "cpu":
            return dtype in self.cpu_dtypes
        if device.type == "cuda":
            return dtype in self.cuda_dtypes
        return False


_REGISTRY: dict[str, dict[str, Impl]] = {}

FLOATS = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64})
FP32 = frozenset({torch.float32})
FP32_HALF = frozenset({torch.float32, torch.float16, torch.bfloat16})

# What each backend runs unless an op says otherwise.
_DEFAULT_DTYPES = {
    "reference": (FLOATS, FLOATS),
    "triton": (FP32_HALF, FP32_HALF),  # CPU only under the interpreter, checked in why_not()
    "cpu": (FP32, frozenset()),
    "cuda": (FP32_HALF, FP32_HALF),  # CPU only under the emulator, checked in why_not()
}


def _no_alias(fn: Callable) -> Callable:
    """Reference formulas may return an input unchanged (linear act, no bias); a custom op must not
    return its inputs, so such outputs are copied."""
    @functools.wraps(fn)
    def wrapper(*args):
        out = fn(*args)
        ptrs = {a.data_ptr() for a in args if isinstance(a, torch.Tensor)}
        outs = out if isinstance(out, tuple) else (out,)
        fixed = tuple(o.clone() if isinstance(o, torch.Tensor) and o.data_ptr() in ptrs and o.numel() else o
                      for o in outs)
        return fixed if isinstance(out, tuple) else fixed[0]
    return wrapper


def register(op: str | tuple[str, ...], backend: str, *, cpu_dtypes: Iterable | None = None,
             cuda_dtypes: Iterable | None = None):
    """Decorator: `fn` implements `op` (the custom op's name, or several ops served by one function)
    on `backend`."""
    _check_name(backend)
    cpu_d, cuda_d = _DEFAULT_DTYPES[backend]

    def deco(fn):
        _chosen.clear()
        impl = _no_alias(fn) if backend == "reference" else fn
        for name in (op,) if isinstance(op, str) else op:
            _REGISTRY.setdefault(name, {})[backend] = Impl(
                impl, frozenset(cpu_dtypes) if cpu_dtypes is not None else cpu_d,
                frozenset(cuda_dtypes) if cuda_dtypes is not None else cuda_d)
        return fn

    return deco


def why_not(op: str, backend: str, device: torch.device | str, dtype: torch.dtype) -> str | None:
    """None if `backend` can run `op` on (device, dtype), else the reason (tests skip with it)."""
    device = torch.device(device)
    impl = _REGISTRY.get(op, {}).get(backend)
    if impl is None:
        return f"{op} has no {backend} implementation"
    status = _available(backend)
    if not status.available:
        return f"the {backend} backend is unavailable: {status.reason}"
    if backend == "triton" and device.type == "cpu" and not triton_interpret():
        return "triton runs CPU tensors only under TRITON_INTERPRET=1"
    if backend == "cuda" and (device.type == "cpu") != _native.cuda_emulated():
        return ("cuda runs CPU tensors only under GANKERN_CUDA_EMULATOR=1" if device.type == "cpu"
                else "the CUDA emulator (GANKERN_CUDA_EMULATOR=1) runs CPU tensors only")
    if not impl.supports(device, dtype):
        return f"the {backend} backend of {op} does not support {dtype} on {device.type}"
    return None


_warned: set[tuple[str, str]] = set()


def _warn_once(op: str, reason: str) -> None:
    if (op, reason) not in _warned:
        _warned.add((op, reason))
        warnings.warn(f"gankern.{op}: {reason}", RuntimeWarning, stacklevel=4)


def _auto_order(op: str, device: torch.device) -> list[str]:
    if device.type == "cpu":
        return ["cpu", "reference"]
    if device.type == "cuda":
        order = [PREFERRED.get(op, "triton"), "triton", "cuda", "reference"]
        return list(dict.fromkeys(order))
    return ["reference"]


# The automatic first choice per (op, device type, dtype): resolve runs on every eager op call, and
# the choice depends only on the registry (register() clears this) and on which backends are
# available (_available, cached for the process already; clear_cache() resets both). Fallbacks are
# not cached (they warn).
_chosen: dict[tuple, Callable] = {}


def resolve(op: str, x: torch.Tensor) -> Callable:
    """The implementation of `op` to run for inputs like `x` (device and dtype)."""
    device, dtype = x.device, x.dtype
    forced = forced_backend()
    if forced is None:
        fn = _chosen.get((op, device.type, dtype))
        if fn is not None:
            return fn
    else:
        why = why_not(op, forced, device, dtype)
        if why is not None:
            raise RuntimeError(f"gankern.{op}: backend {forced!r} was requested but cannot run: {why}")
        return _REGISTRY[op][forced].fn
    order = _auto_order(op, device)
    for name in order:
        why = why_not(op, name, device, dtype)
        if why is None:
            if name != order[0]:  # not cached: the fallback warning's bookkeeping stays in _warn_once
                _warn_once(op, f"{why_not(op, order[0], device, dtype)}; falling back to the {name} backend")
                return _REGISTRY[op][name].fn
            fn = _chosen[(op, device.type, dtype)] = _REGISTRY[op][name].fn
            return fn
    raise RuntimeError(f"gankern.{op}: no backend can run {dtype} on {device}")


def clear_cache() -> None:
    """Forget cached backend availability and choices (after changing the environment at run time)."""
    _available.cache_clear()
    _chosen.clear()


def resolve_nonempty(op: str, x: torch.Tensor) -> Callable:
    """resolve(op, x), except that size-0 inputs run the reference implementation on every backend:
    there is nothing to compute, and kernels and launchers never see size-0 grids (Triton's arange,
    split counts, divisions by a size). The reference defines the outputs (empty, or NaN statistics
    of empty sets) and the zero gradients."""
    if x.numel() == 0:
        return _REGISTRY[op]["reference"].fn
    return resolve(op, x)


def which(op: str, x: torch.Tensor) -> str:
    """Name of the backend `resolve(op, x)` picks (for reports and tests)."""
    fn = resolve(op, x)
    return next(name for name, impl in _REGISTRY[op].items() if impl.fn is fn)


def implementations(op: str) -> dict[str, Impl]:
    return dict(_REGISTRY.get(op, {}))
