"""The diffusers suite of `gankern bench --models`: whole diffusers models as users run them, built
from their published configs with random weights (nothing is downloaded), each case timed as

    eager              diffusers' own model (the baseline)
    compile            torch.compile of it
    optimize           gankern.optimize of it (fused layers swapped in)
    optimize+compile   both
    optimize(bf16)     gankern.optimize(dtype=bfloat16), inference only: numerics change, see the error
    fused / unfused    gankern.models' reimplementation (fused=True / plain torch layers, fused=False)
                       with the same weights, where gankern.models has the architecture

Every variant of a case starts from the same seed, so all compute the same output (the error column).
Pipelines compile their denoiser, not the whole pipeline object.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .models import ModelCase

# Published configs (diffusers' config.json of the named checkpoints).
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
DDPM_CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                    layers_per_block=2,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
                    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=32)
# A small DDIM pipeline: DDPM-CIFAR10's UNet narrowed.
SMALL_UNET = dict(DDPM_CIFAR10, block_out_channels=(64, 128, 128, 128))
# The tiny scale (tests): the same block types, narrow and shallow.
_TINY = dict(layers_per_block=1, norm_num_groups=8)
TINY_VAE = dict(SD_VAE, **_TINY, block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2)
TINY_COND_UNET = dict(SD15_UNET, **_TINY, block_out_channels=(16, 32), cross_attention_dim=16, attention_head_dim=4,
                      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_UNET = dict(DDPM_CIFAR10, **_TINY, block_out_channels=(16, 32),
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))

INFERENCE = ("eager", "compile", "optimize", "optimize+compile", "optimize(bf16)")
TRAINING = ("eager", "compile", "optimize", "optimize+compile")


def _variant_builder(make: Callable[[], tuple[Any, Any]], step: Callable[[Any, Any], Callable[[], Any]],
                     gankern_cls: Callable[..., torch.nn.Module] | None = None, config: dict | None = None):
    """variant name -> timed callable. `make()` returns (diffusers model or pipeline, inputs), seeded;
    `step(model, inputs)` returns the timed callable; gankern_cls(**config, fused=...) is gankern.models'
    version of the architecture, loaded with the diffusers model's weights."""
    def build(variant):
        import gankern
        torch.manual_seed(0)
        model, inputs = make()
        if variant in ("fused", "unfused"):
            ours = gankern_cls(**config, fused=variant == "fused").to(next(model.parameters()).device)
            ours.load_state_dict(model.state_dict())
            model = ours.train(model.training)
        elif variant.startswith("optimize"):
            bf16 = variant == "optimize(bf16)"
            model = gankern.optimize(model, inplace=False, dtype=torch.bfloat16 if bf16 else None)
        if variant.endswith("compile"):
            if hasattr(model, "unet"):   # a pipeline: compile its denoiser
                model.unet = torch.compile(model.unet)
            else:
                model = torch.compile(model)
        return step(model, inputs)
    return build


def _train_step(model, inputs):
    """Forward, MSE to the noise (what diffusers' training scripts do), backward, Adam step."""
    x, t, noise = inputs
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        loss = torch.nn.functional.mse_loss(model(x, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def _no_grad_call(fn):
    def step(model, inputs):
        return torch.no_grad()(lambda: fn(model, inputs))
    return step


def diffusers_models(device, scale: str) -> list[ModelCase]:
    try:
        import diffusers
    except ImportError:   # an optional peer: no diffusers, no diffusers cases
        return []
    from ..models import AutoencoderKL, UNet2DModel
    tiny, full = scale == "tiny", scale == "full"
    vae_cfg = TINY_VAE if tiny else SD_VAE
    latent = 64 if full else 8   # x8 pixels; quick: 64x64 images (seconds per variant on a CPU)

    def vae():
        m = diffusers.AutoencoderKL(**vae_cfg).to(device).eval()
        return m, torch.randn(1, 4, latent, latent, device=device)

    decode = _no_grad_call(lambda m, z: m.decode(z).sample)

    ucfg = TINY_UNET if tiny else DDPM_CIFAR10
    batch = 2 if tiny else 16 if full else 4

    def unet_train():
        m = diffusers.UNet2DModel(**ucfg).to(device).train()
        x = torch.randn(batch, 3, 32, 32, device=device)
        return m, (x, torch.randint(0, 1000, (batch,), device=device), torch.randn_like(x))

    ccfg = TINY_COND_UNET if tiny else SD15_UNET
    side = 8 if tiny else 64 if full else 32

    def unet_cond():
        m = diffusers.UNet2DConditionModel(**ccfg).to(device).eval()
        return m, (torch.randn(2, 4, side, side, device=device), torch.tensor([500, 500], device=device),
                   torch.randn(2, 77, ccfg["cross_attention_dim"], device=device))

    cond_step = _no_grad_call(lambda m, inputs: m(*inputs).sample)

    pcfg = TINY_UNET if tiny else SMALL_UNET
    pbatch, psteps = (1, 2) if tiny else (4, 10) if full else (2, 10)

    def pipeline():
        unet = diffusers.UNet2DModel(**pcfg).to(device).eval()
        pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(num_train_timesteps=1000))
        pipe.set_progress_bar_config(disable=True)
        return pipe, None

    @_no_grad_call
    def sample(pipe, _):
        return pipe(batch_size=pbatch, num_inference_steps=psteps, generator=torch.Generator().manual_seed(0),
                    output_type="pt").images

    return [
        ModelCase("diffusers AutoencoderKL", f"SD VAE decode{' (tiny)' if tiny else ''}",
                  (1, 4, latent, latent), _variant_builder(vae, decode, AutoencoderKL, vae_cfg),
                  variants=("fused", "unfused") + INFERENCE, compare=True, quick=not full),
        ModelCase("diffusers UNet2DModel", f"DDPM-CIFAR10 train step{' (tiny)' if tiny else ''}",
                  (batch, 3, 32, 32), _variant_builder(unet_train, _train_step, UNet2DModel, ucfg),
                  variants=("fused", "unfused") + TRAINING, compare=True, quick=False),
        ModelCase("diffusers UNet2DConditionModel", f"SD 1.5 forward, CFG batch{' (tiny)' if tiny else ''}",
                  (2, 4, side, side), _variant_builder(unet_cond, cond_step), variants=INFERENCE, compare=True,
                  quick=False),
        ModelCase("diffusers DDIMPipeline", f"{psteps} steps, small UNet2DModel", (pbatch, 3, 32, 32),
                  _variant_builder(pipeline, sample), variants=INFERENCE, compare=True, quick=False,
                  notes="optimize also swaps the scheduler; bf16 draws its noise in bf16 (a different sample)"),
    ]
