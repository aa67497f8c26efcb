"""Rewrites a CUDA source for the emulator (csrc/emulator/runtime.h): every kernel launch
    name<targs><<<grid, block, shmem, stream>>>(args)
becomes
    ::gk_emu::launch(name<targs>, grid, block, shmem, stream)(args)
and nothing else changes, so the emulator compiles the very kernels nvcc compiles.

usage: python translate.py input.cu output.cpp
"""
import re
import sys
from pathlib import Path

# A kernel name with optional template arguments (no ; { } inside), then <<<config>>>(.
LAUNCH = re.compile(r"\b([A-Za-z_]\w*(?:\s*<[^;{}]*?>)?)\s*<<<([^;{}]*?)>>>\s*\(", re.S)


def translate(src: str) -> tuple[str, int]:
    def launch(m):
        call = f"::gk_emu::launch({m.group(1)}, {m.group(2)})("
        # Keep the line count, so #line points errors at the right line of the .cu file.
        return call.replace("\n", " ") + "\n" * m.group(0).count("\n")

    out, n = LAUNCH.subn(launch, src)
    if "<<<" in out or ">>>" in out:
        raise SystemExit("translate.py: a kernel launch was not recognized")
    return out, n


def main() -> None:
    src, dst = map(Path, sys.argv[1:3])
    text, n = translate(src.read_text())
    # Errors and warnings point at the original .cu file.
    Path(dst).write_text(f'#line 1 "{src.as_posix()}"\n{text}')
    print(f"translate.py: {src.name}: {n} launches", file=sys.stderr)


if __name__ == "__main__":
    main()
