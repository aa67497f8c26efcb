"""The `gankern` command (also `python -m gankern`): `info` and `bench`."""
from __future__ import annotations

import argparse
import math
import platform
import sys

import torch


def info() -> int:
    import gankern
    from gankern import _native
    from gankern.bench.runner import _cpu_name
    print(f"gankern {gankern.__version__}")
    print(f"python  {platform.python_version()}  ({sys.executable})")
    print(f"torch   {torch.__version__}  (CUDA {torch.version.cuda or 'none'})")
    try:
        import triton
        print(f"triton  {triton.__version__}")
    except ImportError:
        print("triton  not installed")
    print("\nbackends:")
    for status in gankern.backends().values():
        print(f"  {status}")
    print("\ndevices:")
    print(f"  cpu     {_cpu_name()}, {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"  cuda:{i}  {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        print("  cuda    none visible to PyTorch")
    if _native.cuda is not None:
        print(f"\ngankern._cuda: built for sm {_native.cuda.compiled_archs()}, "
              f"CUDA runtime {_native.cuda.runtime_version()}")
    return 0


def positive_seconds(text: str) -> float:
    """argparse type of --budget: a finite number of seconds > 0 (argparse turns the error into a
    usage message naming the option)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds > 0, got {text!r}")
    return v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gankern", description="Fused kernels for generative models.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, backends and devices")
    b = sub.add_parser("bench", help="time gankern against eager PyTorch and torch.compile")
    b.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    b.add_argument("--ops", help="comma-separated op families (default: all)")
    b.add_argument("--out", default="bench-out", help="folder for the JSON results and PNG chart")
    b.add_argument("--full", action="store_true", help="every case and shape, not just the quick set")
    b.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    b.add_argument("--budget", type=positive_seconds, help="seconds of timing per measurement (> 0)")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.cmd == "info":
        return info()
    from gankern.bench.runner import run
    run(args.device, args.ops.split(",") if args.ops else None, args.out, args.full, not args.no_compile,
        args.budget, not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
