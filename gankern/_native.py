"""Loads the compiled modules once and remembers why one could not be loaded.

Nothing here compiles: a missing module means the install skipped it (or failed), and the reason
is reported by `gankern.backends()`.
"""
from __future__ import annotations

import contextlib
import importlib
import os

import torch

# Storage type codes understood by the native kernels (csrc/common/macros.h: gk::DType).
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _load(name: str):
    try:
        return importlib.import_module(f"gankern.{name}"), ""
    except ImportError as e:  # not built, or built against something missing here
        return None, f"gankern.{name} could not be imported ({e})"


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


def ptr(t: torch.Tensor | None) -> int:
    """Address of a tensor's first element, or 0 (nullptr) for None."""
    return 0 if t is None else t.data_ptr()


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def cuda_stream(t: torch.Tensor) -> int:
    """The current CUDA stream of t's device, as the integer the native launchers take (0 for the
    CPU tensors of the CUDA emulator)."""
    if t.device.type != "cuda":
        return 0
    return torch.cuda.current_stream(t.device).cuda_stream


def device_guard(t: torch.Tensor):
    """Makes t's GPU the current device while a launcher runs (nothing for emulated CPU tensors)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
