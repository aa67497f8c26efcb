"""The bridge to diffusers' pipelines (diffusers is imported only when it is already loaded or the
caller hands over a diffusers object).

* register_with_diffusers(): diffusers' DiffusionPipeline.save_pretrained saves a component only if
  its class derives from a base listed in diffusers' LOADABLE_CLASSES table, and from_pretrained
  loads it through the same table. gankern's schedulers do not derive from diffusers' classes (so
  that diffusers stays optional), so this adds one row: library "gankern.schedulers", base class
  `Scheduler`, methods save_pretrained / from_pretrained. A pipeline then records a gankern
  scheduler in model_index.json as ["gankern.schedulers", "<ClassName>"] and reloads it as the
  same gankern class. Called automatically when a gankern scheduler is built while diffusers is
  imported, and by from_diffusers.
* from_diffusers(scheduler): the gankern equivalent of a diffusers scheduler, or None.

Pipeline constructors: DDIMPipeline and DDPMPipeline-like pipelines that convert their scheduler
in __init__ (DDIMPipeline runs `DDIMScheduler.from_config(scheduler.config)` with diffusers'
class) replace a gankern scheduler passed to the constructor by diffusers' own. Assign it after
construction (`pipe.scheduler = gankern_scheduler`, which gankern.optimize does); docs/diffusion.md.
"""
from __future__ import annotations

_NAMES = ("DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
          "DPMSolverMultistepScheduler")


def register_with_diffusers() -> bool:
    """Add gankern's schedulers to diffusers' table of saveable / loadable component classes.
    Idempotent; returns False (and does nothing) when diffusers cannot be imported."""
    try:
        from diffusers.pipelines import pipeline_loading_utils as plu
    except Exception:
        return False
    methods = ["save_pretrained", "from_pretrained"]
    plu.LOADABLE_CLASSES.setdefault("gankern.schedulers", {"Scheduler": methods})
    plu.ALL_IMPORTABLE_CLASSES.setdefault("Scheduler", methods)
    return True


def from_diffusers(scheduler):
    """The gankern scheduler equivalent to `scheduler` (a diffusers scheduler of one of the five
    classes gankern implements), built from its config, with the same step count if set_timesteps
    was called; the scheduler itself if it is already gankern's; None for other classes. Raises
    ValueError naming the option when the config uses an option gankern refuses."""
    from . import _base
    if isinstance(scheduler, _base.Scheduler):
        return scheduler
    cls = type(scheduler)
    if cls.__name__ not in _NAMES or not cls.__module__.startswith("diffusers"):
        return None
    import gankern.schedulers as gs
    register_with_diffusers()
    new = getattr(gs, cls.__name__).from_config(scheduler.config)
    n = getattr(scheduler, "num_inference_steps", None)
    if n is not None:
        try:
            new.set_timesteps(n, device=scheduler.timesteps.device)
        except (ValueError, TypeError):
            pass  # custom timesteps / sigmas: the pipeline calls set_timesteps itself
    return new
