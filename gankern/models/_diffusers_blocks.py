"""The blocks diffusers' UNet2DModel and AutoencoderKL are made of, with diffusers' parameter names.

Each block has two forwards: `fused=False` is diffusers' formulation in plain torch (GroupNorm,
then the activation, the time embedding added as its own pass, out-of-place residual adds), and
`fused=True` sends the hot paths through gankern:
- every GroupNorm + activation is one `GroupNormAct` pass whose backward recomputes the normalized
  value instead of saving it (the activation's input is never stored);
- the ResNet time embedding is a per-(N, C) bias inside norm2 (`temb=`), not a separate add;
- residual adds are in place on the convolution / projection output (their backward does not read
  it), and a division by an output scale of 1 is skipped;
- attention projects q, k and v with one matmul and hands the heads to
  F.scaled_dot_product_attention as strided views; the output is added to the residual straight
  from its (N, HW, C) layout, without the transpose copy.
The two forwards give the same values up to float rounding; parameters and state_dict keys are the
same, so weights move between them and from diffusers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.norm import GroupNormAct

# diffusers' get_activation names -> the activation gankern's norm kernels fuse / torch's function.
ACTIVATIONS = {"silu": "silu", "swish": "silu", "relu": "relu", "gelu": "gelu"}
_TORCH_ACTS = {"silu": F.silu, "relu": F.relu, "gelu": F.gelu}


def torch_act(act: str):
    return _TORCH_ACTS[ACTIVATIONS[act]]


def group_norm(groups: int, channels: int, eps: float, act: str | None, fused: bool) -> nn.GroupNorm:
    """nn.GroupNorm (unfused) or GroupNormAct carrying `act` (fused): the same parameters."""
    if fused:
        return GroupNormAct(groups, channels, eps, affine=True, act=None if act is None else ACTIVATIONS[act])
    return nn.GroupNorm(groups, channels, eps, affine=True)


class ResnetBlock2D(nn.Module):
    """diffusers' ResnetBlock2D (pre-norm, optional time embedding, 1x1 shortcut when the channel
    count changes). `temb` given to forward is the time embedding *after* the activation: models
    compute act(emb) once instead of once per block (the same values)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, groups: int, eps: float,
                 act: str, time_embedding_norm: str = "default", output_scale_factor: float = 1.0,
                 dropout: float = 0.0, fused: bool = True):
        super().__init__()
        self.fused, self.act = fused, act
        self.time_embedding_norm = time_embedding_norm
        self.output_scale_factor = output_scale_factor
        self.norm1 = group_norm(groups, in_channels, eps, act, fused)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        if temb_channels is None:
            self.time_emb_proj = None
        else:
            mult = 2 if time_embedding_norm == "scale_shift" else 1
            self.time_emb_proj = nn.Linear(temb_channels, mult * out_channels)
        self.norm2 = group_norm(groups, out_channels, eps, act, fused)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        t = self.time_emb_proj(temb) if self.time_emb_proj is not None and temb is not None else None
        if self.time_embedding_norm == "scale_shift" and t is None:
            raise ValueError("temb must be given when time_embedding_norm is 'scale_shift'")
        return self._fused(x, t) if self.fused else self._unfused(x, t)

    def _unfused(self, x: Tensor, t: Tensor | None) -> Tensor:
        act = torch_act(self.act)
        h = self.conv1(act(self.norm1(x)))
        if self.time_embedding_norm == "scale_shift":
            scale, shift = torch.chunk(t[:, :, None, None], 2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            if t is not None:
                h = h + t[:, :, None, None]
            h = self.norm2(h)
        h = self.conv2(self.dropout(act(h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return (shortcut + h) / self.output_scale_factor

    def _fused(self, x: Tensor, t: Tensor | None) -> Tensor:
        h = self.conv1(self.norm1(x))
        if self.time_embedding_norm == "scale_shift":
            scale, shift = torch.chunk(t, 2, dim=1)
            h = self.norm2(h, scale=scale, shift=shift)
        else:
            h = self.norm2(h, temb=t)
        if self.dropout.p > 0 and self.training:
            h = self.dropout(h)
        h = self.conv2(h)
        # In place: convolution backward reads its input and weight, never its output.
        h = h.add_(self.conv_shortcut(x) if self.conv_shortcut is not None else x)
        return h if self.output_scale_factor == 1 else h.div_(self.output_scale_factor)


class AttentionBlock(nn.Module):
    """diffusers' spatial self-attention (`Attention` built with residual_connection=True,
    bias=True, an optional input GroupNorm): keys group_norm, to_q, to_k, to_v, to_out.0."""

    def __init__(self, channels: int, head_dim: int, groups: int | None, eps: float,
                 rescale_output_factor: float = 1.0, fused: bool = True):
        super().__init__()
        self.fused = fused
        self.heads = channels // head_dim
        if self.heads < 1:
            raise ValueError(f"attention_head_dim ({head_dim}) must not exceed the channel count ({channels})")
        self.head_dim = head_dim
        inner = self.heads * head_dim
        self.rescale_output_factor = rescale_output_factor
        self.group_norm = group_norm(groups, channels, eps, None, fused) if groups is not None else None
        self.to_q = nn.Linear(channels, inner)
        self.to_k = nn.Linear(channels, inner)
        self.to_v = nn.Linear(channels, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, channels), nn.Dropout(0.0)])

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x) if self.group_norm is not None else x
        seq = h.flatten(2).transpose(1, 2)  # (B, HW, C); a view for channels_last inputs
        if self.fused:
            # one matmul for q, k, v; the heads are strided views SDPA reads in place
            w = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])
            b = torch.cat([self.to_q.bias, self.to_k.bias, self.to_v.bias])
            qkv = F.linear(seq, w, b).view(B, H * W, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        else:
            q, k, v = (proj(seq).view(B, H * W, self.heads, self.head_dim).transpose(1, 2)
                       for proj in (self.to_q, self.to_k, self.to_v))
        o = F.scaled_dot_product_attention(q, k, v)
        o = self.to_out[1](self.to_out[0](o.transpose(1, 2).reshape(B, H * W, self.heads * self.head_dim)))
        if self.fused:
            # (B, HW, C) seen as NCHW with channels_last strides: no copy; the sum takes x's layout
            out = x + o.view(B, H, W, C).permute(0, 3, 1, 2)
            return out if self.rescale_output_factor == 1 else out.div_(self.rescale_output_factor)
        o = o.transpose(1, 2).reshape(B, C, H, W)
        return (o + x) / self.rescale_output_factor


class Downsample2D(nn.Module):
    """Stride-2 3x3 convolution (key `conv`); padding=0 pads right/bottom by one, as diffusers."""

    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest 2x upsampling then a 3x3 convolution (key `conv`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock2D(nn.Module):
    """diffusers' UNetMidBlock2D with one layer: resnet, attention (optional), resnet."""

    def __init__(self, channels: int, temb_channels: int | None, groups: int, eps: float, act: str,
                 head_dim: int, attn_groups: int | None, add_attention: bool, output_scale_factor: float = 1.0,
                 time_embedding_norm: str = "default", dropout: float = 0.0, fused: bool = True):
        super().__init__()
        res = dict(temb_channels=temb_channels, groups=groups, eps=eps, act=act, dropout=dropout,
                   time_embedding_norm=time_embedding_norm, output_scale_factor=output_scale_factor, fused=fused)
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, **res), ResnetBlock2D(channels, channels, **res)])
        self.attentions = nn.ModuleList([AttentionBlock(channels, head_dim, attn_groups, eps, output_scale_factor, fused)
                                         if add_attention else None])

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        x = self.resnets[0](x, temb)
        if self.attentions[0] is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x, temb)


class DownBlock2D(nn.Module):
    """diffusers' DownBlock2D / AttnDownBlock2D / DownEncoderBlock2D: `num_layers` resnets (each
    followed by an attention when head_dim is given) and an optional downsampler. forward returns
    (hidden, skips) with the skips a UNet's up path consumes."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, temb_channels: int | None, groups: int,
                 eps: float, act: str, add_downsample: bool, downsample_padding: int, head_dim: int | None = None,
                 time_embedding_norm: str = "default", dropout: float = 0.0, fused: bool = True):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps, act,
                          time_embedding_norm, 1.0, dropout, fused) for i in range(num_layers)])
        if head_dim is not None:
            self.attentions = nn.ModuleList([AttentionBlock(out_channels, head_dim, groups, eps, 1.0, fused)
                                             for _ in range(num_layers)])
        else:
            self.attentions = None
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, downsample_padding)]) if add_downsample else None

    def forward(self, x: Tensor, temb: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        skips = ()
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x)
            skips += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips += (x,)
        return x, skips


class UpBlock2D(nn.Module):
    """diffusers' UpBlock2D / AttnUpBlock2D (skip_channels given: each resnet takes the concatenation
    with a skip) and UpDecoderBlock2D (skip_channels None), with an optional upsampler."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, temb_channels: int | None, groups: int,
                 eps: float, act: str, add_upsample: bool, skip_channels: int | None = None,
                 head_dim: int | None = None, time_embedding_norm: str = "default", dropout: float = 0.0,
                 fused: bool = True):
        super().__init__()
        resnets = []
        for i in range(num_layers):
            cin = in_channels if i == 0 else out_channels
            if skip_channels is not None:  # the last resnet's skip comes from the previous level
                cin += skip_channels if i == num_layers - 1 else out_channels
            resnets.append(ResnetBlock2D(cin, out_channels, temb_channels, groups, eps, act, time_embedding_norm,
                                         1.0, dropout, fused))
        self.resnets = nn.ModuleList(resnets)
        if head_dim is not None:
            self.attentions = nn.ModuleList([AttentionBlock(out_channels, head_dim, groups, eps, 1.0, fused)
                                             for _ in range(num_layers)])
        else:
            self.attentions = None
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x: Tensor, skips: tuple[Tensor, ...] = (), temb: Tensor | None = None) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            if skips:
                x = torch.cat([x, skips[-1]], dim=1)
                skips = skips[:-1]
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x
