"""One benchmark case's gankern call timed alone in this (fresh) process.

`python -m gankern.bench.standalone FAMILY INDEX [--device D] [--budget S]` builds case INDEX of
gankern/bench/FAMILY.py, times only the gankern call the way `gankern bench` does, and prints
{"ms": median, "faults_per_call": ...} as the last line. `gankern bench --standalone` runs it per case
so the table shows the in-bench time next to what a user's script calling the same function gets.
"""
from __future__ import annotations

import argparse
import importlib
import json

import torch

from .timing import interleaved


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("family")
    ap.add_argument("index", type=int)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", type=float, default=0.4)
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    case = importlib.import_module(f"gankern.bench.{a.family}").cases(dev)[a.index]
    inputs = case.setup()
    t = interleaved({"gankern": lambda: case.gankern(inputs)}, dev, a.budget)["gankern"]
    print(json.dumps({"case": f"{case.label} {'x'.join(map(str, case.shape))}", "ms": t.ms,
                      "faults_per_call": t.faults}))


if __name__ == "__main__":
    main()
