"""Normalization layers with the activation fused in, drop-in for the torch modules they replace.

GroupNormAct and BatchNormAct2d subclass nn.GroupNorm / nn.BatchNorm2d, so parameters, buffers,
state_dict keys and isinstance checks are the torch ones: pretrained weights load unchanged.
ConvNormAct is an nn.Sequential of [conv, norm] with the activation fused into the norm, so its
state_dict matches nn.Sequential(Conv2d, BatchNorm2d, ReLU) (keys "0.*", "1.*").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.bias_act import bias_act
from ..ops.norm import ACTS, batch_norm_act, group_norm_act


def _check_act(act):
    if act is not None and act not in ACTS:
        raise ValueError(f"act must be None or one of {', '.join(ACTS)}, got {act!r}")
    return act


class GroupNormAct(nn.GroupNorm):
    """act(GroupNorm(x + temb) * (1 + scale) + shift) + residual; see gankern.group_norm_act."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 act: str | None = "silu", alpha: float | None = None, device=None, dtype=None):
        super().__init__(num_groups, num_channels, eps, affine, device=device, dtype=dtype)
        self.act, self.alpha = _check_act(act), alpha

    def forward(self, x: Tensor, temb: Tensor | None = None, scale: Tensor | None = None,
                shift: Tensor | None = None, residual: Tensor | None = None) -> Tensor:
        if not _kernel_runs(x) and temb is None and scale is None and shift is None and residual is None:
            # What nn.GroupNorm accepts and the kernels do not (more than 3 spatial dims): torch's
            # own ops, so a swapped-in layer never refuses an input.
            return _torch_act(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps), self.act, self.alpha)
        return group_norm_act(x, self.num_groups, self.weight, self.bias, self.eps, self.act, alpha=self.alpha,
                              temb=temb, scale=scale, shift=shift, residual=residual)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", act={self.act!r}"


def _kernel_runs(x: Tensor) -> bool:
    """Whether gankern's norm ops take x: (N, C) to (N, C, D, H, W) (any float dtype: fp32, fp16 and
    bf16 run the kernels, fp64 the reference)."""
    return 2 <= x.ndim <= 5


def _torch_act(h: Tensor, act: str | None, alpha: float | None) -> Tensor:
    if act is None or act == "linear":
        return h
    if act == "lrelu":
        return F.leaky_relu(h, 0.2 if alpha is None else alpha)
    if act in ("gelu", "gelu_tanh"):
        return F.gelu(h, approximate="tanh" if act == "gelu_tanh" else "none")
    return {"silu": F.silu, "relu": F.relu}[act](h)


class BatchNormAct2d(nn.BatchNorm2d):
    """act(BatchNorm2d(x)), with nn.BatchNorm2d's training/eval behaviour and running statistics
    (momentum=None: cumulative average over num_batches_tracked, as torch)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, act: str | None = "relu", alpha: float | None = None,
                 device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.act, self.alpha = _check_act(act), alpha

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not _kernel_runs(x):
            return _torch_act(super().forward(x), self.act, self.alpha)
        # The same decisions as torch.nn.modules.batchnorm._BatchNorm.forward.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return batch_norm_act(x, self.running_mean if track else None, self.running_var if track else None,
                              self.weight, self.bias, use_batch_stats, factor, self.eps, self.act, alpha=self.alpha)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", act={self.act!r}"


class Activation(nn.Module):
    """The activation alone (what remains of a norm+activation once the norm is folded away)."""

    def __init__(self, act: str | None, alpha: float | None = None):
        super().__init__()
        self.act, self.alpha = _check_act(act), alpha

    def forward(self, x: Tensor) -> Tensor:
        if self.act is None or self.act == "linear":
            return x
        alpha = (0.2 if self.act == "lrelu" else None) if self.alpha is None else self.alpha
        return bias_act(x, None, act=self.act, alpha=alpha, gain=1.0)

    def extra_repr(self) -> str:
        return f"act={self.act!r}"


def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> None:
    """Fold an eval-mode BatchNorm's affine map into the preceding convolution, in place:
    w' = w * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps) per output channel."""
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                             nn.ConvTranspose3d)):
        raise TypeError(f"conv must be a torch convolution, got {type(conv).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    with torch.no_grad():
        var, mean = bn.running_var.double(), bn.running_mean.double()
        s = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            s = s * bn.weight.double()
        shift = -mean * s + (bn.bias.double() if bn.bias is not None else 0.0)
        w = conv.weight
        out = s.numel()
        if isinstance(conv, nn.modules.conv._ConvTransposeNd):
            # weight (in, out / groups, *k): output channel g * (out / groups) + j is [g-th input block, j]
            g = conv.groups
            wv = w.double().reshape(g, w.shape[0] // g, out // g, *w.shape[2:])
            wv = wv * s.reshape(g, 1, out // g, *([1] * (w.ndim - 2)))
            new_w = wv.reshape(w.shape)
        else:
            new_w = w.double() * s.reshape(out, *([1] * (w.ndim - 1)))
        b = conv.bias.double() if conv.bias is not None else torch.zeros(out, dtype=torch.float64, device=w.device)
        new_b = b * s + shift
        conv.weight.copy_(new_w.to(w.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(new_b.to(w.dtype))
        else:
            conv.bias.copy_(new_b.to(w.dtype))


class ConvNormAct(nn.Sequential):
    """Convolution (cuDNN / oneDNN through torch) followed by the fused norm + activation.

    norm: "group" (GroupNormAct with `num_groups`), "batch" (BatchNormAct2d) or None (activation
    only). The convolution has a bias only when there is no norm, unless `bias` says otherwise.
    `.fuse()` folds an eval-mode BatchNorm into the convolution for inference.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 norm: str | None = "group", act: str | None = "silu", transposed: bool = False, *,
                 num_groups: int = 32, eps: float = 1e-5, momentum: float | None = 0.1, alpha: float | None = None,
                 bias: bool | None = None, output_padding=0, dilation=1, groups: int = 1, device=None, dtype=None):
        if norm not in ("group", "batch", None):
            raise ValueError(f"norm must be 'group', 'batch' or None, got {norm!r}")
        _check_act(act)
        bias = norm is None if bias is None else bias
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias, device=device,
                  dtype=dtype)
        if transposed:
            conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, output_padding=output_padding, **kw)
        else:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size, **kw)
        if norm == "group":
            post = GroupNormAct(num_groups, out_channels, eps, act=act, alpha=alpha, device=device, dtype=dtype)
        elif norm == "batch":
            post = BatchNormAct2d(out_channels, eps, momentum, act=act, alpha=alpha, device=device, dtype=dtype)
        else:
            post = Activation(act, alpha)
        super().__init__(conv, post)
        self.norm_kind = norm

    @property
    def conv(self) -> nn.Module:
        return self[0]

    @property
    def norm(self) -> nn.Module | None:
        return self[1] if isinstance(self[1], (nn.GroupNorm, nn.BatchNorm2d)) else None

    def forward(self, x: Tensor) -> Tensor:
        return self[1](self[0](x))

    def fuse(self) -> "ConvNormAct":
        """Fold the BatchNorm into the convolution (eval mode only); a no-op for other norms."""
        bn = self.norm
        if isinstance(bn, nn.BatchNorm2d):
            if bn.training:
                raise RuntimeError("ConvNormAct.fuse() needs eval mode: call .eval() first")
            fold_conv_bn(self[0], bn)
            self[1] = Activation(getattr(bn, "act", None), getattr(bn, "alpha", None))
            self.norm_kind = None
        return self
