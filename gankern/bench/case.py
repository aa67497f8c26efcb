"""What a benchmark is: one op at one shape, timed against eager PyTorch and torch.compile.

Each op family contributes `cases(device) -> list[Case]` in gankern/bench/<family>.py and is listed
in gankern/bench/__init__.py:FAMILIES. `gankern bench` and benchmarks/bench_<family>.py (pytest-
benchmark) run the same cases, so a shape is defined once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class Case:
    op: str                      # family name, as given to `gankern bench --ops`
    variant: str                 # what is timed, e.g. "lrelu+clamp fwd" or "silu fwd+bwd"
    shape: tuple                 # the main tensor's shape (for the table)
    dtype: torch.dtype
    setup: Callable[[], Any]     # builds inputs on the device (called once, outside timing)
    gankern: Callable[[Any], Any]    # the gankern call under test
    eager: Callable[[Any], Any]      # what users run today for the same work: native torch ops,
                                     # diffusers, StyleGAN's reference code, the textbook formula;
                                     # never gankern's own reference. torch.compile of it (or of
                                     # `compile`) is the second baseline
    bytes: int                   # fewest bytes the work must move: every input read once, every
                                 # output written once; % of copy bandwidth is computed from it
    quick: bool = False          # part of the default `gankern bench` run
    compile: Callable[[Any], Any] | None = None  # what torch.compile gets, if not `eager`
    notes: str = ""
    tags: dict = field(default_factory=dict)
    kernel: str | None = None    # the dispatched op whose backend the table names (default: op)
    spec: Callable[[Any], Any] | None = None  # gankern's reference specification run eagerly: an
                                              # extra column, for the record, never the baseline

    @property
    def label(self) -> str:
        return f"{self.op} {self.variant}"
