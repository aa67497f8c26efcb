"""Pure-PyTorch specifications of every gankern op: readable, float64-capable, differentiable.

Each kernel backend is tested against these run in float64, and they are the fallback wherever no
kernel can run.
"""
