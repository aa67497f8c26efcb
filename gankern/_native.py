"""The compiled modules and the one way Python calls them.

Loading: each module is imported once; why one could not be (not built, or built from other
tables than gankern/_tables.py: a stale build) is reported by `gankern.backends()`. Nothing here
compiles.

Calling: every native entry point is `<module>.<family>.<pass>(stream, *fields)`, the fields of
its C++ Params struct (csrc/common/view.h, GK_STRUCT) in order; a tensor field takes the tensor
itself (or None), which the binding reads as a gk::View (address, dtype code, numel: the layout is
the family's contract). `entry` makes the only callers, keyword-only functions that pick the
module of the backend, the device and the stream.
"""
from __future__ import annotations

import importlib
import os

import torch

from . import _tables

# torch dtype -> gk::DType code of a gk::View (gankern/_tables.py: DTYPES).
DTYPE_CODES = {getattr(torch, name): code for name, code in _tables.DTYPES.items()}


def _load(name: str):
    try:
        mod = importlib.import_module(f"gankern.{name}")
    except ImportError as e:  # not built, or built against something missing here
        return None, f"gankern.{name} could not be imported ({e})"
    built, want = getattr(mod, "TABLES_DIGEST", None), _tables.digest()
    if built != want:
        return None, (f"gankern.{name} was built from other tables than gankern/_tables.py "
                      f"({built} != {want}); rebuild it (pip install -e . or python setup.py build_ext --inplace)")
    mod.set_dtype_codes(DTYPE_CODES)
    return mod, ""


def cuda_emulated() -> bool:
    """GANKERN_CUDA_EMULATOR=1: the cuda backend is gankern._cuda_emu, the CUDA kernels emulated on
    the CPU (csrc/emulator/runtime.h), and runs on CPU tensors, as Triton's TRITON_INTERPRET=1."""
    return os.environ.get("GANKERN_CUDA_EMULATOR", "0") not in ("", "0")


cpu, cpu_error = _load("_C")
if cuda_emulated():
    cuda, cuda_error = _load("_cuda_emu")
    if cuda is None:
        cuda_error += "; build it with GANKERN_BUILD_EMULATOR=1 pip install -e ."
else:
    cuda, cuda_error = _load("_cuda")

if cpu is not None:
    # One thread count for torch and our kernels (csrc/common/thread_pool.h).
    cpu.set_num_threads(torch.get_num_threads())


_CALLER = """\
def {name}(device_of, *, {fields}):
    if not device_of.is_cuda:
        return fn(0, {fields})
    with torch.cuda.device(device_of.device):
        return fn(torch.cuda.current_stream(device_of.device).cuda_stream, {fields})
"""


def entry(backend: str, name: str):
    """The native entry point `name` ("family.pass") of `backend` ("cpu" or "cuda") as a Python
    function `f(device_of, **fields)` taking the fields of its C++ Params by keyword, all
    required (tensors, None for an absent tensor, scalars). It runs on device_of's GPU and its
    current stream for CUDA tensors, stream 0 for CPU tensors (the cpu backend, the CUDA
    emulator), and returns what the entry point returns (usually None). Made once per entry point
    from the field names the module exports: the call costs what a positional call costs."""
    key = (backend, name)
    if key not in _ENTRIES:
        family, pass_ = name.split(".")
        sub = getattr(cpu if backend == "cpu" else cuda, family)
        namespace = {"fn": getattr(sub, pass_), "torch": torch}
        exec(_CALLER.format(name=pass_, fields=", ".join(sub.FIELDS[pass_])), namespace)
        _ENTRIES[key] = namespace[pass_]
    return _ENTRIES[key]


_ENTRIES: dict = {}

