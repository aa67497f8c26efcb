"""`gankern bench`: each op against eager PyTorch and torch.compile, on the current device.

Op families register their cases in gankern/bench/<family>.py (a `cases(device)` function) and are
listed in FAMILIES; gankern/bench/runner.py times them and writes the table, JSON and chart.
"""
from .case import Case

# Order = order in the report. One line per op family.
FAMILIES = [
    "bias_act",
    "upfirdn2d",
    "filtered_lrelu",
    "gan_layers",
    "modulated_conv",
    "norm",
    "vae",
    "diffusion",
    "transformer",
]

__all__ = ["Case", "FAMILIES"]
