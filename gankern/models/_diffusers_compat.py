"""diffusers' conventions for the models that mirror diffusers' classes: a read-only config with
attribute access (like diffusers' FrozenDict), `from_config`, and output objects that answer both
`out.sample` and `out[0]` (like diffusers' BaseOutput). diffusers itself is never imported."""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Mapping


class ModelConfig(dict):
    """A model's constructor arguments; `cfg.block_out_channels` and `cfg["block_out_channels"]`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key, value):
        raise TypeError("model configs are read-only; build a new model with from_config(config, key=value)")


def config_mapping(config: Mapping[str, Any] | Any) -> dict:
    """A plain dict from a diffusers config (FrozenDict), a model that has `.config`, or a mapping;
    diffusers' bookkeeping keys (`_class_name`, `_diffusers_version`, ...) are dropped."""
    if not isinstance(config, Mapping) and hasattr(config, "config"):
        config = config.config
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping (e.g. a diffusers model's .config), got {type(config).__name__}")
    return {k: v for k, v in dict(config).items() if not str(k).startswith("_")}


class ConfigMixin:
    """`config` and `from_config` for a module whose __init__ takes diffusers' option names as
    keywords (plus `fused`, which is not part of the config)."""

    _config: ModelConfig

    def _register_config(self, **options) -> None:
        self._config = ModelConfig(options)

    @property
    def config(self) -> ModelConfig:
        return self._config

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any, fused: bool = True, **kwargs):
        """Build from a diffusers config (or any mapping of its option names). Options this class
        does not know are dropped with a warning, as diffusers' from_config drops them; known options
        with values this implementation does not support raise ValueError naming the option."""
        options = config_mapping(config)
        options.update(kwargs)
        known = set(inspect.signature(cls.__init__).parameters) - {"self", "fused"}
        unknown = sorted(set(options) - known)
        if unknown:
            warnings.warn(f"{cls.__name__}.from_config ignores unknown option(s) {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in options.items() if k in known}, fused=fused)


class ModelOutput:
    """Named outputs, also indexable by position (the tuple that return_dict=False gives)."""

    _fields: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs):
        values = dict(zip(self._fields, args))
        values.update(kwargs)
        for name in self._fields:
            setattr(self, name, values.get(name))

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, n) for n in self._fields if getattr(self, n) is not None)

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

    def __iter__(self):
        return iter(self.to_tuple())

    def __len__(self):
        return len(self.to_tuple())

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(self._fields)})"


class UNet2DOutput(ModelOutput):
    _fields = ("sample",)


class DecoderOutput(ModelOutput):
    _fields = ("sample", "commit_loss")


class AutoencoderKLOutput(ModelOutput):
    _fields = ("latent_dist",)


def check_choice(option: str, value, allowed, cls_name: str):
    if value not in allowed:
        raise ValueError(f"{cls_name}: {option}={value!r} is not supported (supported: "
                         f"{', '.join(repr(a) for a in allowed)})")
    return value


def check_types(option: str, values, allowed, cls_name: str) -> tuple:
    values = tuple(values)
    for v in values:
        check_choice(option, v, allowed, cls_name)
    return values


def check_blocks(cls_name: str, down_block_types: tuple, up_block_types: tuple, block_out_channels,
                 norm_num_groups, fused) -> tuple:
    """The block-list checks diffusers' AutoencoderKL and UNet2DModel share: as many down blocks,
    up blocks and widths, a group count dividing every width, a bool `fused`. Returns the widths
    as a tuple of ints."""
    block_out_channels = tuple(int(c) for c in block_out_channels)
    if not (len(down_block_types) == len(up_block_types) == len(block_out_channels)):
        raise ValueError(f"{cls_name}: down_block_types, up_block_types and block_out_channels must have the same "
                         f"length, got {len(down_block_types)}, {len(up_block_types)}, {len(block_out_channels)}")
    if not isinstance(norm_num_groups, int) or isinstance(norm_num_groups, bool) or norm_num_groups < 1 or any(
            c % norm_num_groups for c in block_out_channels):
        raise ValueError(f"{cls_name}: norm_num_groups must be a positive int dividing every block_out_channels "
                         f"entry, got {norm_num_groups!r} for {block_out_channels}")
    if not isinstance(fused, bool):
        raise TypeError(f"fused must be a bool, got {type(fused).__name__}")
    return block_out_channels
