"""diffusers integration: fused forwards for the blocks of diffusers' UNets and VAEs.

Imported by gankern.optimize only when diffusers is installed. Each class here is a static,
importable subclass of a diffusers block that only replaces the block's forward (or a helper
method), so `optimize()` switches an existing block's `__class__` to it: the block keeps its
Parameters, buffers, submodules and hooks, isinstance checks still hold, and pickle / deepcopy
find the class by name. A forward falls back to diffusers' own for any configuration it does
not cover exactly.

- ResnetBlock2D runs norm1 -> SiLU -> conv1 -> (+ time embedding) -> norm2 -> SiLU -> conv2: four
  full passes for the norms and activations, plus one or two for the time embedding. Here each
  norm carries its activation and norm2 takes the time embedding as a per-(N, C) bias before its
  statistics ("default") or as scale/shift after its affine ("scale_shift"): two passes in all.
  The residual add is done in place into conv2's output (one allocation fewer).
- Transformer2DModel (continuous inputs, conv projections) turns its tokens back into an image
  with `.contiguous()` before proj_out: with channels_last activations that is a full NCHW copy
  which the convolution immediately turns back into NHWC. The fused version hands proj_out the
  NHWC view instead (same values; the layout the convolution wants).
- BasicTransformerBlock (norm_type "layer_norm", as SD 1.x/2.x): each "residual add -> LayerNorm"
  becomes one add_layer_norm pass that writes both the new residual stream and its normalization.
- GEGLU: gelu(gate) * hidden from the halves of one projection in one pass (gankern.geglu).
- TimestepEmbedding (linear_1 -> act -> linear_2): the activation runs with linear_1's bias in
  one bias_act pass over the matmul's output.
- AdaGroupNorm (GroupNorm without affine, then x * (1 + scale) + shift from the embedding) is one
  group_norm_act pass with per-(N, C) scale/shift; in ResnetBlockCondNorm2D ("ada_group" UNets)
  the SiLU after each AdaGroupNorm joins that pass too.
"""
from __future__ import annotations

import torch
from diffusers.models.activations import GEGLU
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.normalization import AdaGroupNorm
from diffusers.models.resnet import ResnetBlock2D, ResnetBlockCondNorm2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
import torch.nn.functional as F
from torch import nn

from ..ops.bias_act import bias_act
from ..ops.geglu import geglu
from ..ops.layer_norm import add_layer_norm
from ..ops.norm import group_norm_act


def _plain_group_norm(m) -> bool:
    """An nn.GroupNorm (or gankern's GroupNormAct without an activation of its own)."""
    return isinstance(m, nn.GroupNorm) and getattr(m, "act", None) is None


def _gn(norm: nn.GroupNorm, x: torch.Tensor, act: str, **extra) -> torch.Tensor:
    return group_norm_act(x, norm.num_groups, norm.weight, norm.bias, norm.eps, act, **extra)


# ---- ResnetBlock2D ---------------------------------------------------------------------------

def resnet_block_problem(block: ResnetBlock2D) -> str | None:
    """Why the fused forward cannot run this block exactly, or None."""
    if not (_plain_group_norm(block.norm1) and _plain_group_norm(block.norm2)):
        return "norm1/norm2 are not plain GroupNorms"
    if not isinstance(block.nonlinearity, nn.SiLU):
        return f"activation {type(block.nonlinearity).__name__} is not SiLU"
    if block.time_embedding_norm not in ("default", "scale_shift") and block.time_emb_proj is not None:
        return f"time_embedding_norm={block.time_embedding_norm!r} with a time embedding"
    return None


class FusedResnetBlock2D(ResnetBlock2D):
    """ResnetBlock2D whose norms carry the SiLU and the time embedding (see the module docstring)."""

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or (temb is not None and self.time_emb_proj is None) or not _kernel_input(input_tensor):
            return super().forward(input_tensor, temb, *args, **kwargs)  # the cases diffusers handles alone

        hidden_states = _gn(self.norm1, input_tensor, "silu")
        input_tensor, hidden_states = _resample_pair(self, input_tensor, hidden_states)

        hidden_states = self.conv1(hidden_states)

        t = None
        if temb is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            t = self.time_emb_proj(temb)
        if self.time_embedding_norm == "default" or t is None and self.time_embedding_norm != "scale_shift":
            hidden_states = _gn(self.norm2, hidden_states, "silu", temb=t)
        else:
            if t is None:
                raise ValueError(f"`temb` should not be None when `time_embedding_norm` is {self.time_embedding_norm}")
            scale, shift = torch.chunk(t, 2, dim=1)
            hidden_states = _gn(self.norm2, hidden_states, "silu", scale=scale, shift=shift)

        hidden_states = self.dropout(hidden_states)
        hidden_states = self.conv2(hidden_states)

        if self.conv_shortcut is not None:
            if self.training:  # as diffusers (DDP gradient strides), keeping a dense NHWC tensor as it is
                cl = input_tensor.is_contiguous(memory_format=torch.channels_last)
                input_tensor = input_tensor if cl else input_tensor.contiguous()
            input_tensor = self.conv_shortcut(input_tensor)

        # conv2's output is a fresh tensor autograd does not need: add into it.
        output_tensor = hidden_states.add_(input_tensor)
        if self.output_scale_factor != 1.0:
            output_tensor = output_tensor.div_(self.output_scale_factor)
        return output_tensor


def _kernel_input(x: torch.Tensor) -> bool:
    return x.ndim == 4 and (x.device.type != "cpu" or x.dtype in (torch.float32, torch.float64))


# ---- Transformer2DModel ----------------------------------------------------------------------

def transformer_2d_problem(model: Transformer2DModel) -> str | None:
    if not getattr(model, "is_input_continuous", False):
        return "not continuous (image) inputs"
    if model.use_linear_projection:
        return "linear projections: proj_out already sees the token layout"
    return None


def _resample_pair(block, input_tensor: torch.Tensor, hidden_states: torch.Tensor):
    """A diffusers ResNet block's optional up/downsampling of its input and hidden state, as
    diffusers does it."""
    if block.upsample is not None:
        if hidden_states.shape[0] >= 64:  # as diffusers: upsample_nearest_nhwc fails on large batches
            input_tensor = input_tensor.contiguous()
            hidden_states = hidden_states.contiguous()
        return block.upsample(input_tensor), block.upsample(hidden_states)
    if block.downsample is not None:
        return block.downsample(input_tensor), block.downsample(hidden_states)
    return input_tensor, hidden_states


class FusedTransformer2DModel(Transformer2DModel):
    """Transformer2DModel that gives proj_out the NHWC view of its tokens instead of an NCHW copy."""

    def _get_output_for_continuous_inputs(self, hidden_states, residual, batch_size, height, width, inner_dim):
        if self.use_linear_projection:
            return super()._get_output_for_continuous_inputs(hidden_states, residual, batch_size, height, width,
                                                             inner_dim)
        # (B, HW, C) contiguous -> (B, C, H, W) in channels_last strides: no copy.
        hidden_states = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
        hidden_states = self.proj_out(hidden_states)
        return hidden_states + residual


# ---- BasicTransformerBlock -------------------------------------------------------------------

def transformer_block_problem(block: BasicTransformerBlock) -> str | None:
    if block.norm_type != "layer_norm":
        return f"norm_type={block.norm_type!r}"
    if block.pos_embed is not None:
        return "positional embedding inside the block"
    for name in ("norm2", "norm3"):
        norm = getattr(block, name, None)
        if norm is not None and type(norm) is not nn.LayerNorm:
            return f"{name} is a {type(norm).__name__}"
    if block.attn2 is None or block.norm2 is None:
        return "no cross-attention"
    return None


class FusedBasicTransformerBlock(BasicTransformerBlock):
    """BasicTransformerBlock (norm_type "layer_norm") whose residual adds are fused into the
    following LayerNorm: h = a + h; n = LayerNorm(h) in one pass writing both."""

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                timestep=None, cross_attention_kwargs=None, class_labels=None, added_cond_kwargs=None):
        gligen = cross_attention_kwargs is not None and "gligen" in cross_attention_kwargs
        if (gligen or self._chunk_size is not None or hidden_states.ndim != 3
                or not _ln_kernel_input(hidden_states)):
            return super().forward(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                   timestep, cross_attention_kwargs, class_labels, added_cond_kwargs)
        kwargs = dict(cross_attention_kwargs) if cross_attention_kwargs is not None else {}
        kwargs.pop("scale", None)  # deprecated and ignored by diffusers as well

        norm_hidden_states = self.norm1(hidden_states)
        attn_output = self.attn1(norm_hidden_states,
                                 encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
                                 attention_mask=attention_mask, **kwargs)
        n2 = self.norm2
        norm_hidden_states, hidden_states = add_layer_norm(attn_output, hidden_states, n2.weight, n2.bias, n2.eps)
        attn_output = self.attn2(norm_hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=encoder_attention_mask, **kwargs)
        n3 = self.norm3
        norm_hidden_states, hidden_states = add_layer_norm(attn_output, hidden_states, n3.weight, n3.bias, n3.eps)
        return self.ff(norm_hidden_states) + hidden_states


def _ln_kernel_input(x: torch.Tensor) -> bool:
    return x.device.type != "cpu" or x.dtype in (torch.float32, torch.float64)


# ---- GEGLU -----------------------------------------------------------------------------------

def geglu_problem(m: GEGLU) -> str | None:
    if type(m).gelu is not GEGLU.gelu:
        return "a custom gelu"
    return None


class FusedGEGLU(GEGLU):
    """GEGLU with gelu(gate) * hidden computed in one pass over the projection's output."""

    def forward(self, hidden_states, *args, **kwargs):
        if args or kwargs or not _ln_kernel_input(hidden_states):
            return super().forward(hidden_states, *args, **kwargs)
        return geglu(self.proj(hidden_states))  # diffusers' GEGLU: exact (erf) GELU


# ---- TimestepEmbedding -----------------------------------------------------------------------

# Activation modules diffusers' get_activation builds -> the bias_act activation computing the same.
def _bias_act_name(m) -> str | None:
    if type(m) is nn.SiLU:
        return "silu"
    if type(m) is nn.ReLU:
        return "relu"
    if type(m) is nn.GELU:
        return "gelu" if m.approximate == "none" else "gelu_tanh"
    return None


def _plain_linear(m) -> bool:
    return type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks)


def timestep_embedding_problem(m: TimestepEmbedding) -> str | None:
    if m.act is None or _bias_act_name(m.act) is None:
        return f"activation {type(m.act).__name__} has no bias_act equivalent"
    if not _plain_linear(m.linear_1):
        return "linear_1 is not a plain nn.Linear (or has hooks)"
    return None


class FusedTimestepEmbedding(TimestepEmbedding):
    """TimestepEmbedding whose activation runs with linear_1's bias in one bias_act pass."""

    def forward(self, sample, condition=None):
        act = _bias_act_name(self.act)
        if act is None or sample.ndim != 2 or not _ln_kernel_input(sample) or not _plain_linear(self.linear_1):
            return super().forward(sample, condition)  # e.g. linear_1 swapped for a LoRA layer since
        if condition is not None:
            sample = sample + self.cond_proj(condition)
        sample = bias_act(F.linear(sample, self.linear_1.weight), self.linear_1.bias, dim=1, act=act, gain=1.0)
        sample = self.linear_2(sample)
        if self.post_act is not None:
            sample = self.post_act(sample)
        return sample


# ---- AdaGroupNorm and ResnetBlockCondNorm2D --------------------------------------------------

def ada_group_norm_problem(m: AdaGroupNorm) -> str | None:
    return None


def _ada_gn(norm: AdaGroupNorm, x: torch.Tensor, emb: torch.Tensor, act: str | None) -> torch.Tensor:
    """act(AdaGroupNorm(x, emb)) in one group_norm_act pass (diffusers: F.group_norm without
    affine, then x * (1 + scale) + shift with scale, shift = linear(act(emb)).chunk(2))."""
    if norm.act:
        emb = norm.act(emb)
    scale, shift = norm.linear(emb).chunk(2, dim=1)
    return group_norm_act(x, norm.num_groups, None, None, norm.eps, act, scale=scale, shift=shift)


def _ada_input(x: torch.Tensor, emb: torch.Tensor) -> bool:
    return x.ndim == 4 and emb.ndim == 2 and _kernel_input(x)


class FusedAdaGroupNorm(AdaGroupNorm):
    """AdaGroupNorm in one group_norm_act pass (scale/shift per (N, C))."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if not _ada_input(x, emb):
            return super().forward(x, emb)
        return _ada_gn(self, x, emb, None)


def _is_ada_group_norm(m) -> bool:
    return type(m) in (AdaGroupNorm, FusedAdaGroupNorm) and not (m._forward_hooks or m._forward_pre_hooks)


def resnet_cond_norm_problem(block: ResnetBlockCondNorm2D) -> str | None:
    if not (_is_ada_group_norm(block.norm1) and _is_ada_group_norm(block.norm2)):
        return (f"norms are {type(block.norm1).__name__} (only AdaGroupNorm is covered; SpatialNorm scales by a "
                "full tensor, which the norm kernel does not take)")
    if not isinstance(block.nonlinearity, nn.SiLU):
        return f"activation {type(block.nonlinearity).__name__} is not SiLU"
    return None


class FusedResnetBlockCondNorm2D(ResnetBlockCondNorm2D):
    """ResnetBlockCondNorm2D ("ada_group") whose AdaGroupNorms carry the SiLU after them."""

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or not _ada_input(input_tensor, temb) or not (
                _is_ada_group_norm(self.norm1) and _is_ada_group_norm(self.norm2)):
            return super().forward(input_tensor, temb, *args, **kwargs)
        hidden_states = _ada_gn(self.norm1, input_tensor, temb, "silu")
        input_tensor, hidden_states = _resample_pair(self, input_tensor, hidden_states)
        hidden_states = self.conv1(hidden_states)
        hidden_states = _ada_gn(self.norm2, hidden_states, temb, "silu")
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.conv2(hidden_states)
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        return (input_tensor + hidden_states) / self.output_scale_factor


# Block class -> (fused class, why-not function, passes saved per call, description). The
# optimizer switches exactly these classes (never subclasses it does not know).
FUSED_BLOCKS = {
    ResnetBlock2D: (FusedResnetBlock2D, resnet_block_problem, 3,
                    "ResnetBlock2D: norm1+SiLU, (time embedding)+norm2+SiLU fused"),
    Transformer2DModel: (FusedTransformer2DModel, transformer_2d_problem, 1,
                         "Transformer2DModel: proj_out reads the NHWC tokens (no .contiguous() copy)"),
    BasicTransformerBlock: (FusedBasicTransformerBlock, transformer_block_problem, 2,
                            "BasicTransformerBlock: residual add + LayerNorm fused (norm2, norm3)"),
    GEGLU: (FusedGEGLU, geglu_problem, 1, "GEGLU: gelu(gate) * hidden in one pass"),
    TimestepEmbedding: (FusedTimestepEmbedding, timestep_embedding_problem, 1,
                        "TimestepEmbedding: linear_1's bias + activation in one bias_act pass"),
    ResnetBlockCondNorm2D: (FusedResnetBlockCondNorm2D, resnet_cond_norm_problem, 2,
                            "ResnetBlockCondNorm2D: AdaGroupNorm + SiLU fused (norm1, norm2)"),
    AdaGroupNorm: (FusedAdaGroupNorm, ada_group_norm_problem, 2,
                   "AdaGroupNorm: group norm + per-sample scale/shift in one pass"),
}

# Modules whose forward applies `act` right after `norm` and nowhere else (checked against
# diffusers' source for each class): the norm takes the activation, the activation slot
# becomes nn.Identity.
NORM_ACT_ATTRIBUTES = {
    "UNet2DModel": ("conv_norm_out", "conv_act"),
    "UNet2DConditionModel": ("conv_norm_out", "conv_act"),
    "Encoder": ("conv_norm_out", "conv_act"),
    "Decoder": ("conv_norm_out", "conv_act"),
}
