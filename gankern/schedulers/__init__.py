"""Drop-in replacements for diffusers' schedulers whose step() is one fused pass over the latents
(gankern.ops.diffusion.fused_step), with classifier-free guidance inside the step.

    sched = gankern.schedulers.DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(50)
    out = sched.step(unet_out_2b, t, latents, guidance_scale=7.5)   # [uncond; cond] batched output

diffusers is not needed to use them; from_config accepts any mapping of diffusers' option names.
from_diffusers(scheduler) gives the gankern equivalent of a diffusers scheduler (or None).
"""
from ._base import Scheduler, StepOutput, _register_with_diffusers_if_loaded
from ._config import Config
from ._diffusers import from_diffusers, register_with_diffusers
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpm_solver import DPMSolverMultistepScheduler
from .euler import EulerDiscreteScheduler
from .euler_ancestral import EulerAncestralDiscreteScheduler

# Public under this module's name: diffusers' pipelines record a component's module in
# model_index.json and re-import the class from it, and pickle finds classes the same way.
for _cls in (Scheduler, StepOutput, Config, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
             EulerDiscreteScheduler, EulerAncestralDiscreteScheduler):
    _cls.__module__ = __name__
del _cls
_register_with_diffusers_if_loaded()

__all__ = ["Config", "Scheduler", "StepOutput", "DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
           "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "from_diffusers",
           "register_with_diffusers"]
