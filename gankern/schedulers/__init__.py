"""Drop-in replacements for diffusers' schedulers whose step() is one fused pass over the latents
(gankern.ops.diffusion.fused_step), with classifier-free guidance inside the step.

    sched = gankern.schedulers.DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(50)
    out = sched.step(unet_out_2b, t, latents, guidance_scale=7.5)   # [uncond; cond] batched output

diffusers is not needed to use them; from_config accepts any mapping of diffusers' option names.
"""
from ._base import Config, Scheduler, StepOutput
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpm_solver import DPMSolverMultistepScheduler
from .euler import EulerDiscreteScheduler
from .euler_ancestral import EulerAncestralDiscreteScheduler

__all__ = ["Config", "Scheduler", "StepOutput", "DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
           "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"]
