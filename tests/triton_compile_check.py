"""Compiles every Triton kernel specialization the tests launch, for a real GPU, on a machine without
one. The interpreter (TRITON_INTERPRET=1, how CI runs the Triton kernels) accepts code the compiler
rejects: a `tl.` function an older Triton lacks, a type the code generator will not take, an op on a
constexpr-specialized argument. The first H200 session found such failures only on the GPU
(benchmarks/results/h200-2026-11-29/); this finds them here, against any Triton version.

Two steps, since the recording Triton (the one tests run) and the compiling one may differ:

    # 1. run tests under the interpreter, recording each kernel launch (name, argument types,
    #    constexpr values, num_warps): a JSON of unique specializations. Either any pytest run
    #    with GANKERN_RECORD_TRITON set (tests/conftest.py; .ci/run records its whole run), or
    python tests/triton_compile_check.py record launches.json -- tests/test_vae.py -q
    # 2. compile each for sm_90 (no GPU needed) with the Triton on PYTHONPATH, e.g. the one
    #    torch 2.11 ships: pip install --no-deps --target /tmp/tri36 triton==3.6.0
    PYTHONPATH=/tmp/tri36:. python tests/triton_compile_check.py compile launches.json [--arch 90]

Step 2 prints one line per kernel that fails to compile, with the compiler's message, and exits 1
if any did. It does not run anything: numerics on the GPU (NaN propagation of tl.maximum, fast
math) stay for a GPU session.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor

# torch dtype name -> Triton pointer element type
_PTR = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "int64": "i64",
        "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}


def _spec(value, constexpr: bool, specialize: bool):
    """A launch argument as JSON: what the compiler's signature needs of it."""
    import torch
    if constexpr:
        value = getattr(value, "value", value) if type(value).__name__ == "constexpr" else value
        if value is None or isinstance(value, (bool, int, float, str)):
            return {"const": value}
        name = getattr(value, "name", None) or str(value)  # a tl.dtype
        return {"dtype": name}
    if isinstance(value, torch.Tensor):
        return {"ptr": _PTR[str(value.dtype).replace("torch.", "")]}
    if value is None:
        return {"const": None}
    if isinstance(value, bool):
        return {"type": "i1"}
    if isinstance(value, int):
        if specialize and value == 1:  # Triton turns an int argument equal to 1 into a constexpr
            return {"const": 1}
        return {"type": "i32" if -2**31 <= value < 2**31 else "i64"}
    if isinstance(value, float):
        return {"type": "fp32"}
    raise TypeError(f"unrecorded argument type {type(value).__name__}")


def start_recording(out_path: str) -> None:
    """Records every gankern kernel launch the interpreter runs from now on; writes the unique
    specializations to out_path when the process exits. tests/conftest.py calls this when
    GANKERN_RECORD_TRITON names a file (.ci/run does, then compiles them)."""
    os.environ["TRITON_INTERPRET"] = "1"
    import atexit
    import inspect

    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    seen: dict[str, dict] = {}
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        if self.fn.__module__.startswith("gankern."):  # not a test's own kernel
            try:
                params = list(inspect.signature(self.fn).parameters.values())
                bound = dict(zip([p.name for p in params], args))
                meta = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
                bound.update({k: v for k, v in kwargs.items() if k not in meta})
                nospec = set(self.kwargs.get("do_not_specialize") or ())
                spec = {p.name: _spec(bound[p.name], p.annotation is tl.constexpr or p.annotation == "tl.constexpr",
                                      p.name not in nospec)
                        for p in params if p.name in bound}
                entry = {"module": self.fn.__module__, "name": self.fn.__name__, "args": spec, "meta": meta}
                seen.setdefault(json.dumps(entry, sort_keys=True), entry)
            except Exception as e:  # noqa: BLE001 - recording must never change a test's outcome
                print(f"triton_compile_check: could not record {self.fn.__name__}: {e}", file=sys.stderr)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    def write():
        with open(out_path, "w") as f:
            json.dump(sorted(seen.values(), key=lambda e: (e["module"], e["name"])), f, indent=1)
        print(f"triton_compile_check: {len(seen)} unique launches recorded in {out_path}", file=sys.stderr)

    InterpretedFunction.run = run
    atexit.register(write)


def record(out_path: str, pytest_args: list[str]) -> int:
    start_recording(out_path)
    import pytest
    return int(pytest.main(pytest_args))


def _jit_function(module: str, name: str):
    from triton.runtime.jit import JITFunction
    obj = getattr(importlib.import_module(module), name)
    while not isinstance(obj, JITFunction):  # Autotuner, Heuristics wrap it in .fn
        obj = obj.fn
    return obj


def _compile_one(entry: dict, arch: int) -> str | None:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    try:
        fn = _jit_function(entry["module"], entry["name"])
        signature, constexprs = {}, {}
        for name, s in entry["args"].items():
            if "ptr" in s:
                signature[name] = "*" + s["ptr"]
            elif "type" in s:
                signature[name] = s["type"]
            else:
                signature[name] = "constexpr"
                constexprs[name] = getattr(tl, s["dtype"]) if "dtype" in s else s["const"]
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(entry["meta"]))
        return None
    except Exception as e:  # noqa: BLE001 - each failure is the report
        while e.__cause__ is not None:  # a kernel's error wraps the failing callee's: report the innermost
            e = e.__cause__
        msg = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        # the compiler's message is the last line, the source line it points at two above
        return f"{type(e).__name__}: " + " / ".join(msg[-3:])


def compile_all(path: str, arch: int, jobs: int) -> int:
    import triton
    if not os.path.isfile(path):
        print(f"triton_compile_check: no recorded launches at {path} (run `record` first)", file=sys.stderr)
        return 2
    with open(path) as f:
        entries = json.load(f)
    with ProcessPoolExecutor(jobs) as pool:
        errors = list(pool.map(_compile_one, entries, [arch] * len(entries)))
    failed = {}
    for e, err in zip(entries, errors):
        if err:
            failed.setdefault((e["module"], e["name"], err), []).append(e)
    for (module, name, err), es in sorted(failed.items()):
        print(f"FAIL {module}.{name} ({len(es)} specializations): {err}\n  e.g. {json.dumps(es[0]['args'])}")
    n_bad = sum(len(v) for v in failed.values())
    print(f"triton {triton.__version__}, sm_{arch}: {len(entries) - n_bad}/{len(entries)} specializations compiled")
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="run pytest (arguments after --) recording kernel launches")
    r.add_argument("out")
    c = sub.add_parser("compile", help="compile the recorded launches for a GPU target")
    c.add_argument("launches")
    c.add_argument("--arch", type=int, default=90)
    c.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = ap.parse_args(argv)
    if args.cmd == "record":
        return record(args.out, extra)
    return compile_all(args.launches, args.arch, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
