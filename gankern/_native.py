"""Loads the compiled modules once and remembers why one could not be loaded.

Nothing here compiles: a missing module means the install skipped it (or failed), and the reason
is reported by `gankern.backends()`.
"""
from __future__ import annotations

import importlib

import torch

# Storage type codes understood by the native kernels (csrc/common/macros.h: gk::DType).
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _load(name: str):
    try:
        return importlib.import_module(f"gankern.{name}"), ""
    except ImportError as e:  # not built, or built against something missing here
        return None, f"gankern.{name} could not be imported ({e})"


cpu, cpu_error = _load("_C")
cuda, cuda_error = _load("_cuda")

if cpu is not None:
    # One thread pool size for torch and our OpenMP kernels.
    cpu.set_num_threads(torch.get_num_threads())


def ptr(t: torch.Tensor | None) -> int:
    """Address of a tensor's first element, or 0 (nullptr) for None."""
    return 0 if t is None else t.data_ptr()


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def cuda_stream(t: torch.Tensor) -> int:
    """The current CUDA stream of t's device, as the integer the native launchers take."""
    return torch.cuda.current_stream(t.device).cuda_stream
