"""layer_norm specification: LayerNorm over the last dimension, with the residual add before it
fused (the pre-norm transformer block's "h = attn(...) + h; n = norm(h)").

    h = x + residual                      (residual optional; h is returned too: the new residual stream)
    mean, var = moments of h over the last dim (biased var)
    y = (h - mean) / sqrt(var + eps) * weight + bias

Math in the input dtype for fp32/fp64 and in fp32 for fp16/bf16; mean and rstd are returned
(fp32, fp64 for fp64 input) with one value per row. The backward is autograd of this forward
(the kernels implement its closed form).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _upcast(t: Tensor | None) -> Tensor | None:
    if t is not None and t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


def layer_norm(x: Tensor, residual: Tensor | None, weight: Tensor | None, bias: Tensor | None,
               eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (y, h, mean, rstd); h is empty when residual is None (it would be x itself)."""
    xf = _upcast(x)
    h = xf if residual is None else xf + _upcast(residual).to(xf.dtype)
    mean = h.mean(-1, keepdim=True)
    var = h.var(-1, unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    y = (h - mean) * rstd
    if weight is not None:
        y = y * _upcast(weight).to(y.dtype)
    if bias is not None:
        y = y + _upcast(bias).to(y.dtype)
    h_out = x.new_empty(0) if residual is None else h.to(x.dtype)
    return y.to(x.dtype), h_out, mean.squeeze(-1), rstd.squeeze(-1)
