"""Scheduler configuration as diffusers' ConfigMixin / SchedulerMixin expose it, without importing
diffusers: a read-only config, save_config / save_pretrained / load_config / from_config /
from_pretrained with diffusers' file names and semantics, and `compatibles`.

A config saved by gankern loads in diffusers and the other way round (same option names, same
`scheduler_config.json`; `_class_name` names the diffusers class of the same name).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

logger = logging.getLogger("gankern.schedulers")

CONFIG_NAME = "scheduler_config.json"

# Keys diffusers writes next to the options; they never change the math and are not kept.
_META_KEYS = {"_class_name", "_diffusers_version", "_use_default_values", "_name_or_path", "_ignore_files",
              "_gankern_version"}


def _plain(value):
    """A config value as JSON can hold it and == can compare it (arrays and tensors become lists)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class Config(dict):
    """The scheduler's configuration: a read-only dict with attribute access, like diffusers'
    FrozenDict (`scheduler.config.prediction_type`, `dict(scheduler.config)`). Every mutation
    raises: the schedule was built from these values, so changing them later would silently
    disagree with it; build a new scheduler with `from_config(config, key=value)` instead."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("scheduler configs are read-only; build a new scheduler with "
                        "SchedulerClass.from_config(scheduler.config, key=value)")

    __setitem__ = __delitem__ = __ior__ = _refuse
    update = pop = popitem = setdefault = clear = _refuse

    def __setattr__(self, name, value):
        self._refuse()

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    # dict's pickle protocol refills the dict item by item through __setitem__; rebuild it whole
    def __reduce__(self):
        return (Config, (dict(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return Config({k: _deepcopy(v, memo) for k, v in self.items()})


def _deepcopy(v, memo):
    import copy
    return copy.deepcopy(v, memo)


class ConfigIO:
    """diffusers' ConfigMixin + SchedulerMixin file API for the gankern schedulers. Subclasses define
    _DEFAULTS (the options and their defaults, diffusers' names)."""

    config_name = CONFIG_NAME
    has_compatibles = True
    _deprecated_kwargs: list = []
    # the classes this one converts to and from (all five share diffusers' option vocabulary)
    _compatibles: list = ["DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
                          "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"]

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def extract_init_dict(cls, config: Mapping[str, Any], **kwargs):
        """(options this class takes, options it does not: kept in the config as diffusers keeps them,
        unused kwargs)."""
        config = {k: v for k, v in dict(config).items() if k not in _META_KEYS}
        init = {k: v for k, v in config.items() if k in cls._DEFAULTS}
        hidden = {k: v for k, v in config.items() if k not in cls._DEFAULTS}
        unused = {}
        for k, v in kwargs.items():
            if k in cls._DEFAULTS:
                init[k] = v
            else:
                unused[k] = v
        return init, hidden, unused

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any = None, return_unused_kwargs: bool = False, **kwargs):
        """Build from a diffusers or gankern scheduler's config (or any mapping, or an object with a
        .config). Options this scheduler does not have are not passed to it but stay in its config,
        as diffusers keeps them, so converting A -> B -> A loses nothing."""
        if config is None:
            raise ValueError("from_config needs a config (a mapping or an object with .config)")
        if not isinstance(config, Mapping) and hasattr(config, "config"):
            config = config.config
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping or have a .config, got {type(config).__name__}")
        init, hidden, unused = cls.extract_init_dict(config, **kwargs)
        unexpected = {k: v for k, v in hidden.items() if not k.startswith("_")}
        if unexpected and not any(k in c._DEFAULTS for c in _registry() for k in unexpected):
            logger.info("config options %s are not used by %s", sorted(unexpected), cls.__name__)
        obj = cls(**init)
        if hidden:
            obj._config = Config({**obj._config, **{k: _plain(v) for k, v in hidden.items()}})
        return (obj, unused) if return_unused_kwargs else obj

    def register_to_config(self, **kwargs) -> None:
        """Add entries to the config that do not change the schedule (diffusers' pipelines and
        tests record extra keys this way). Changing an option the schedule was built from raises."""
        for k, v in kwargs.items():
            if k in self._DEFAULTS and _plain(v) != self._config.get(k):
                raise ValueError(f"register_to_config cannot change the option {k!r} of a built scheduler; "
                                 f"use {type(self).__name__}.from_config(scheduler.config, {k}=...)")
        self._config = Config({**self._config, **{k: _plain(v) for k, v in kwargs.items()}})

    # -- files ---------------------------------------------------------------------------------
    def to_json_string(self) -> str:
        d = {k: _plain(v) for k, v in self._config.items()}
        d["_class_name"] = type(self).__name__
        try:
            from importlib.metadata import version
            d["_diffusers_version"] = version("diffusers")
        except Exception:  # diffusers not installed: any version string loads
            d["_diffusers_version"] = "0.0.0"
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """Write `scheduler_config.json` into save_directory (created if needed), as diffusers does."""
        if push_to_hub:
            raise ValueError("push_to_hub is not supported by gankern; save locally and upload with huggingface_hub")
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, self.config_name), "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """diffusers' SchedulerMixin.save_pretrained: the config is the whole state."""
        self.save_config(save_directory, push_to_hub=push_to_hub, **kwargs)

    @classmethod
    def load_config(cls, pretrained_model_name_or_path: str | os.PathLike | dict, subfolder: str | None = None,
                    return_unused_kwargs: bool = False, **kwargs):
        """The config dict of a local directory or file (or, for a Hub id, through diffusers' own
        loader when diffusers is installed: gankern does no network access itself)."""
        if isinstance(pretrained_model_name_or_path, Mapping):
            config = dict(pretrained_model_name_or_path)
        else:
            path = os.fspath(pretrained_model_name_or_path)
            if os.path.isfile(path):
                file = path
            else:
                folder = os.path.join(path, subfolder) if subfolder else path
                file = os.path.join(folder, cls.config_name)
                if not os.path.isdir(path):
                    try:
                        from diffusers.configuration_utils import ConfigMixin
                    except ImportError as e:
                        raise ValueError(f"{path!r} is not a local directory; gankern reads local configs only "
                                         "(install diffusers to load from the Hub)") from e

                    class _Loader(ConfigMixin):
                        config_name = cls.config_name
                    config = _Loader.load_config(path, subfolder=subfolder, **kwargs)
                    return (config, {}) if return_unused_kwargs else config
                if not os.path.isfile(file):
                    raise OSError(f"no file named {cls.config_name} in {folder}")
            with open(file, encoding="utf-8") as f:
                config = json.load(f)
        return (config, kwargs) if return_unused_kwargs else config

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None = None,
                        subfolder: str | None = None, return_unused_kwargs: bool = False, **kwargs):
        """Load a scheduler saved by save_pretrained / save_config (gankern's or diffusers'); kwargs
        override options, as in diffusers."""
        hub_keys = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision",
                    "use_auth_token", "local_dir", "user_agent")
        load_kw = {k: kwargs.pop(k) for k in hub_keys if k in kwargs}
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, **load_kw)
        return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # -- compatibles ---------------------------------------------------------------------------
    @classmethod
    def _get_compatibles(cls) -> list:
        names = [cls.__name__] + [n for n in cls._compatibles if n != cls.__name__]
        by_name = {c.__name__: c for c in _registry()}
        return [by_name[n] for n in names if n in by_name]

    @property
    def compatibles(self) -> list:
        """The gankern schedulers that can be built from this one's config (all five share
        diffusers' option names; from_config keeps the options one does not use)."""
        return self._get_compatibles()


def _registry() -> list:
    from . import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, \
        EulerDiscreteScheduler
    return [DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
            DPMSolverMultistepScheduler]
