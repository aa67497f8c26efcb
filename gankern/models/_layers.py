"""Building blocks shared by the models: each exists in a fused form (gankern's ops and layers) and
an unfused form (plain torch), with the same parameters and buffers under the same names, so one
state_dict loads into either.

- `norm_act(kind, channels, act, fused)`: GroupNorm/BatchNorm2d followed by an activation. Fused:
  gankern.nn.GroupNormAct / BatchNormAct2d (one kernel). Unfused: an nn.GroupNorm / nn.BatchNorm2d
  subclass that applies the torch activation after torch's norm.
- `ConvNormAct`: [convolution, norm+activation] as an nn.Sequential (keys "0.*", "1.*", the same
  as torch's nn.Sequential(Conv2d, BatchNorm2d, ReLU)). Fused and in eval mode, a BatchNorm is
  folded into the convolution on the fly and the per-channel shift + activation run as one
  gankern.bias_act; the stored weights never change.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import Activation, BatchNormAct2d, GroupNormAct
from ..ops.bias_act import bias_act

LRELU_SLOPE = 0.2


def torch_act(x: Tensor, act: str | None) -> Tensor:
    """The activation in plain torch (what the unfused models run)."""
    if act is None or act == "linear":
        return x
    if act == "relu":
        return F.relu(x)
    if act == "lrelu":
        return F.leaky_relu(x, LRELU_SLOPE)
    if act == "silu":
        return F.silu(x)
    raise ValueError(f"act must be None, 'relu', 'lrelu' or 'silu', got {act!r}")


class TorchGroupNormAct(nn.GroupNorm):
    """act(nn.GroupNorm(x)) in plain torch; the parameters of nn.GroupNorm."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, act: str | None = "silu"):
        super().__init__(num_groups, num_channels, eps)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return torch_act(super().forward(x), self.act)


class TorchBatchNormAct2d(nn.BatchNorm2d):
    """act(nn.BatchNorm2d(x)) in plain torch; the parameters and buffers of nn.BatchNorm2d."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, act: str | None = "relu"):
        super().__init__(num_features, eps, momentum)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return torch_act(super().forward(x), self.act)


class TorchActivation(nn.Module):
    """The activation alone, in plain torch (no parameters)."""

    def __init__(self, act: str | None):
        super().__init__()
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return torch_act(x, self.act)


def norm_act(kind: str | None, channels: int, act: str | None, fused: bool, num_groups: int = 8) -> nn.Module:
    """Norm ("group", "batch" or None) + activation, fused (gankern) or not (torch)."""
    alpha = LRELU_SLOPE if act == "lrelu" else None
    if kind == "group":
        groups = min(num_groups, channels)
        return GroupNormAct(groups, channels, act=act, alpha=alpha) if fused else TorchGroupNormAct(groups, channels,
                                                                                                     act=act)
    if kind == "batch":
        return BatchNormAct2d(channels, act=act, alpha=alpha) if fused else TorchBatchNormAct2d(channels, act=act)
    if kind is None:
        return Activation(act, alpha) if fused else TorchActivation(act)
    raise ValueError(f"norm must be 'group', 'batch' or None, got {kind!r}")


class ConvNormAct(nn.Sequential):
    """[Conv2d or ConvTranspose2d, norm + activation]; see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 norm: str | None = "batch", act: str | None = "relu", fused: bool = True,
                 transposed: bool = False, bias: bool | None = None, num_groups: int = 8):
        bias = norm is None if bias is None else bias
        conv_cls = nn.ConvTranspose2d if transposed else nn.Conv2d
        super().__init__(conv_cls(in_channels, out_channels, kernel_size, stride, padding, bias=bias),
                         norm_act(norm, out_channels, act, fused, num_groups))
        self.fused, self.transposed, self.act = fused, transposed, act

    def forward(self, x: Tensor) -> Tensor:
        conv, post = self[0], self[1]
        if (self.fused and not self.training and isinstance(post, nn.BatchNorm2d)
                and post.running_mean is not None):
            return self._folded_forward(x, conv, post)
        return post(conv(x))

    def _folded_forward(self, x: Tensor, conv: nn.Module, bn: nn.BatchNorm2d) -> Tensor:
        # Eval-mode BatchNorm is the affine map y * s + (beta - mean * s), s = gamma / sqrt(var + eps):
        # scale the convolution's weight by s and let bias_act add the shift and apply the activation.
        s = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * s
        if conv.bias is not None:
            shift = shift + conv.bias * s
        if self.transposed:  # weight [in, out, k, k]
            w = conv.weight * s.view(1, -1, 1, 1)
            y = F.conv_transpose2d(x, w, None, conv.stride, conv.padding, conv.output_padding, conv.groups,
                                   conv.dilation)
        else:
            w = conv.weight * s.view(-1, 1, 1, 1)
            y = F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        return bias_act(y, shift, act=self.act or "linear", alpha=LRELU_SLOPE if self.act == "lrelu" else None,
                        gain=1.0)


def check_fused(fused) -> bool:
    if not isinstance(fused, bool):
        raise TypeError(f"fused must be a bool, got {type(fused).__name__}")
    return fused


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
