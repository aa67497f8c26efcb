"""gankern.optimize: put gankern's fused layers into someone else's model or diffusers pipeline.

    report = gankern.optimize(unet)          # in place; a diffusers model, a CNN, a DCGAN...
    print(report)
    fast = gankern.optimize(vae, inplace=False)     # an optimized deep copy; fast.gankern_report

What it changes, and the promises it keeps:
- Modules are changed in place by switching their class to a gankern subclass (GroupNorm ->
  GroupNormAct, BatchNorm2d -> BatchNormAct2d, diffusers blocks -> gankern.integrations.diffusers):
  the module objects, their Parameters, buffers and hooks stay the same objects, so an optimizer
  built before optimize() keeps updating them, tied or shared modules stay tied, state_dict keys
  do not change and checkpoints load strictly. Every class is importable by name: pickle,
  torch.save of the whole model and deepcopy work.
- An activation module that directly follows a norm (consecutive children of an nn.Sequential, a
  diffusers block's conv_norm_out -> conv_act, or, in any module whose forward torch.fx can trace,
  a norm whose only consumer is an activation module used nowhere else) moves into the norm; its
  slot becomes nn.Identity.
- A norm shared by several parents or modules with hooks are left alone (reported), since the
  fused forward would change what the hooks see or what the other users get.
- Folding BatchNorm into the preceding convolution changes the state_dict (the BatchNorm's keys
  disappear), so it happens only when asked: fold_bn=True (eval mode).
- channels_last (NHWC) weights where measurements say it is faster (see _CHANNELS_LAST); the
  report records the layout chosen and why.
- Calling optimize() again changes nothing.
"""
from __future__ import annotations

import copy
import importlib
import types
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .fold import fold_batchnorm
from .nn.norm import Activation, BatchNormAct2d, GroupNormAct

_ACT_NAMES = {nn.SiLU: "silu", nn.ReLU: "relu", nn.LeakyReLU: "lrelu"}


@dataclass
class OptimizeReport:
    """What gankern.optimize did: (module name, what) per change; `left_alone` says why not."""
    replaced: list[tuple[str, str]] = field(default_factory=list)
    left_alone: list[tuple[str, str]] = field(default_factory=list)
    folded: list[tuple[str, str]] = field(default_factory=list)   # (conv, batchnorm), only with fold_bn=True
    layouts: list[tuple[str, str]] = field(default_factory=list)  # (module, "channels_last: why" / "NCHW: why")
    scheduler: str | None = None
    passes_saved: int = 0  # full-tensor memory passes saved per forward call, estimated

    def __str__(self) -> str:
        lines = [f"gankern.optimize: {len(self.replaced)} modules fused, {len(self.folded)} BatchNorms folded, "
                 f"~{self.passes_saved} full-tensor passes saved per forward"]
        lines += [f"  fused    {name}: {what}" for name, what in self.replaced]
        lines += [f"  folded   {bn} into {conv} (state_dict keys of {bn} removed)" for conv, bn in self.folded]
        lines += [f"  layout   {name}: {what}" for name, what in self.layouts]
        if self.scheduler:
            lines.append(f"  scheduler: {self.scheduler}")
        lines += [f"  left     {name}: {why}" for name, why in self.left_alone]
        return "\n".join(lines)


# channels_last decisions, measured on CPU fp32 (2-vCPU AMD EPYC, single-thread CPU time, interleaved;
# benchmarks/NOTES.md, "gankern.optimize on whole models"): model class name -> (use it, why).
# Models not listed keep their layout. GPU measurements should refine this table.
_CHANNELS_LAST = {
    "AutoencoderKL": (True, "measured 1.14x on the SD VAE decode with NHWC convolutions alone"),
    "Decoder": (True, "as AutoencoderKL"),
    "Encoder": (True, "as AutoencoderKL"),
    "UNet2DModel": (True, "measured 1.01x (DDPM-CIFAR10 training step): neutral on CPU, NHWC is what the "
                          "convolutions and fused norms share"),
    "UNet2DConditionModel": (False, "measured 0.97x: linear layers and attention dominate"),
}


def _act_of(m: nn.Module) -> tuple[str, float | None] | None:
    """The norm-kernel activation equal to torch activation module m, or None."""
    name = _ACT_NAMES.get(type(m))
    if name == "lrelu":
        return name, float(m.negative_slope)
    if name is not None:
        return name, None
    if type(m) is nn.GELU:
        return ("gelu" if m.approximate == "none" else "gelu_tanh"), None
    return None


def _has_hooks(m: nn.Module) -> bool:
    """Hooks the user registered (optimize's own dtype-casting pre-hook does not count)."""
    pre = [h for h in getattr(m, "_forward_pre_hooks", {}).values() if h is not _cast_inputs]
    return bool(pre) or any(getattr(m, a, None) for a in ("_forward_hooks", "_backward_hooks", "_backward_pre_hooks"))


class _Walk:
    """One optimize() pass over a module tree: names, use counts and the report."""

    def __init__(self, model: nn.Module, report: OptimizeReport, prefix: str):
        self.model, self.report, self.prefix = model, report, prefix
        self.uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
        self.names = {id(m): self._full(n) for n, m in model.named_modules()}
        self.claimed: set[int] = set()  # norms a fused block's forward now runs itself

    def _full(self, name: str) -> str:
        return ".".join(p for p in (self.prefix, name) if p) or "<root>"

    def name(self, m: nn.Module) -> str:
        return self.names.get(id(m), "?")

    def replaced(self, m, what, passes=0):
        self.report.replaced.append((self.name(m), what))
        self.report.passes_saved += passes

    def left(self, m, why):
        self.report.left_alone.append((self.name(m), why))

    def why_not_fuse(self, norm: nn.Module, act: nn.Module | None = None) -> str | None:
        """Why the norm (and the activation after it) cannot take a fused forward, or None."""
        if self.uses[id(norm)] > 1:
            return "shared by several parents: fusing an activation would change the other uses"
        if _has_hooks(norm) or (act is not None and _has_hooks(act)):
            return "has hooks that would see the fused output"
        return None


def _make_group_norm_act(gn: nn.GroupNorm, act: str | None, alpha: float | None) -> None:
    gn.__class__ = GroupNormAct
    gn.act, gn.alpha = act, alpha


def _make_batch_norm_act(bn: nn.BatchNorm2d, act: str | None, alpha: float | None) -> None:
    bn.__class__ = BatchNormAct2d
    bn.act, bn.alpha = act, alpha


def _fuse_norm_act(w: _Walk, norm: nn.Module, act_module, what: str | None = None) -> bool:
    """Give `norm` the activation `act_module` (a torch activation module, or an (act, alpha)
    pair found in a forward); the caller removes the activation from the forward. False, with the
    reason reported, when it cannot."""
    act = act_module if isinstance(act_module, tuple) else _act_of(act_module)
    if act is None:
        return False
    if type(norm) is nn.GroupNorm:
        make, kind = _make_group_norm_act, "GroupNormAct"
    elif type(norm) is nn.BatchNorm2d:
        make, kind = _make_batch_norm_act, "BatchNormAct2d"
    else:
        return False
    why = w.why_not_fuse(norm, act_module if isinstance(act_module, nn.Module) else None)
    if why is not None:
        w.left(norm, why)
        return False
    make(norm, *act)
    what = what or type(act_module).__name__
    w.replaced(norm, f"{kind}(act={act[0]!r}) absorbing the {what} after it", passes=1)
    return True


def _fuse_sequentials(w: _Walk) -> None:
    for seq in list(w.model.modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        keys = list(seq._modules)
        for a, b in zip(keys, keys[1:]):
            norm, act = seq._modules[a], seq._modules[b]
            if norm is not None and act is not None and _fuse_norm_act(w, norm, act):
                seq._modules[b] = nn.Identity()


def _fuse_named_pairs(w: _Walk, table: dict[str, tuple[str, str]]) -> None:
    """Parents whose forward is known to apply `act` right after `norm` and nowhere else."""
    for parent in list(w.model.modules()):
        pair = table.get(type(parent).__name__)
        if pair is None or getattr(parent, pair[0], None) is None or getattr(parent, pair[1], None) is None:
            continue
        norm, act = getattr(parent, pair[0]), getattr(parent, pair[1])
        if w.uses[id(act)] == 1 and _fuse_norm_act(w, norm, act):
            setattr(parent, pair[1], nn.Identity())


class _OneLevelTracer(torch.fx.Tracer):
    """Traces one module's own forward; every submodule is a leaf (a call_module node)."""

    def is_leaf_module(self, m, qualname):
        return True


def _trace_one_level(parent: nn.Module) -> torch.fx.Graph | None:
    """parent's own forward as an fx graph, or None when it cannot stand for every call: tracing
    fails (data-dependent control flow, unsupported Python), the traced code differs between
    training and eval mode (`if self.training:` is baked in at trace time), or it reads tensor
    attributes that are not parameters or buffers (fx would freeze them as constants)."""
    before, was_training = set(parent.__dict__), parent.training
    graphs = []
    try:
        for training in (was_training, not was_training):
            parent.training = training  # this module only: its children are leaves
            graphs.append(_OneLevelTracer().trace(parent))
    except Exception:  # data-dependent control flow, unsupported Python: leave the module alone
        return None
    finally:
        parent.training = was_training
        for name in set(parent.__dict__) - before:  # fx stores tensor constants on the traced module
            del parent.__dict__[name]
    srcs = {g.python_code(root_module="self").src for g in graphs}
    if len(srcs) != 1 or any(n.op == "get_attr" and n.target.startswith("_tensor_constant") for n in graphs[0].nodes):
        return None
    return graphs[0]


# Functional activations fx records in a forward -> the norm kernels' activation (alpha from the call).
_F_ACTS = {F.relu: "relu", torch.relu: "relu", F.relu_: "relu", torch.relu_: "relu", F.silu: "silu",
           F.leaky_relu: "lrelu", F.leaky_relu_: "lrelu", F.gelu: "gelu"}
_METHOD_ACTS = {"relu": "relu", "relu_": "relu"}


def _functional_act(node: torch.fx.Node, src: torch.fx.Node) -> tuple[str, float | None] | None:
    """The activation a call_function / call_method node applies to `src` (its only tensor
    argument), or None when it is not one the norm kernels run exactly."""
    if node.op == "call_function" and node.target in _F_ACTS:
        name, args, kwargs = _F_ACTS[node.target], node.args, dict(node.kwargs)
    elif node.op == "call_method" and node.target in _METHOD_ACTS:
        name, args, kwargs = _METHOD_ACTS[node.target], node.args, dict(node.kwargs)
    else:
        return None
    if not args or args[0] is not src:
        return None
    kwargs.pop("inplace", None)
    rest = list(args[1:])
    if name == "lrelu":
        slope = kwargs.pop("negative_slope", rest.pop(0) if rest else 0.01)
        if rest and isinstance(rest[0], bool):
            rest.pop(0)  # positional inplace
        return (name, float(slope)) if not rest and not kwargs and isinstance(slope, (int, float)) else None
    if name == "gelu":
        approx = kwargs.pop("approximate", "none")
        if rest or kwargs or approx not in ("none", "tanh"):
            return None
        return ("gelu" if approx == "none" else "gelu_tanh"), None
    if rest and isinstance(rest[0], bool):
        rest.pop(0)
    return (name, None) if not rest and not kwargs else None


class _TracedForward:
    """A module's forward after optimize() removed activation calls from it: the code torch.fx
    generates from the edited graph, called with the module as `self`, so it reads the module's
    current submodules and parameters at every call. Stored as the instance's `forward`; pickles
    and deep-copies as (module, source, globals) and is recompiled on load."""

    def __init__(self, owner: nn.Module, src: str, globals_spec: dict):
        self.owner, self.src, self.globals_spec = owner, src, globals_spec
        env = {k: importlib.import_module(v) if kind == "module" else v for k, (kind, v) in globals_spec.items()}
        exec(compile(src, f"<gankern.optimize: {type(owner).__qualname__}.forward>", "exec"), env)
        self._fn = env["forward"]

    @classmethod
    def from_graph(cls, owner: nn.Module, graph: torch.fx.Graph) -> "_TracedForward":
        code = graph.python_code(root_module="self")
        spec = {k: ("module", v.__name__) if isinstance(v, types.ModuleType) else ("value", v)
                for k, v in code.globals.items()}
        return cls(owner, code.src, spec)

    def __call__(self, *args, **kwargs):
        return self._fn(self.owner, *args, **kwargs)

    def __reduce__(self):
        return (_TracedForward, (self.owner, self.src, self.globals_spec))


def _fx_pairs(w: _Walk, fold_bn: bool) -> None:
    """Norm -> activation (and, with fold_bn, conv -> BatchNorm) pairs inside forwards that are not
    nn.Sequential, found by tracing each module's forward with torch.fx (a torchvision-style
    ResNet's stem and blocks, a custom block).

    - The norm's output goes only to an activation module applied nowhere else: the activation
      moves into the norm and its slot becomes nn.Identity (the forward is unchanged).
    - The activation is a function (`F.relu(self.bn(x))`, `.relu_()`) or a module also applied
      elsewhere (torchvision's BasicBlock `self.relu`, used again after the residual add): the
      activation moves into the norm and the forward is re-generated from the traced graph
      without that one call (_TracedForward), once per module."""
    for parent in list(w.model.modules()):
        if isinstance(parent, nn.Sequential) or not parent._modules or type(parent).__module__.startswith(
                ("torch.", "diffusers.", "gankern.")):
            continue
        graph = _trace_one_level(parent)
        if graph is None:
            continue
        rewritten = isinstance(parent.__dict__.get("forward"), _TracedForward)
        calls: dict[str, list] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls.setdefault(node.target, []).append(node)
        dropped = []
        for target, nodes in calls.items():
            if "." in target or len(nodes) != 1:
                continue
            node, child = nodes[0], parent._modules.get(target)
            users = list(node.users)
            if child is None or len(users) != 1:
                continue
            user = users[0]
            if user.op != "call_module":
                act = _functional_act(user, node)
                call = f"{getattr(user.target, '__name__', user.target)}() call"
                if act is not None and not rewritten and _fuse_norm_act(w, child, act, call):
                    dropped.append(user)
                continue
            if "." in str(user.target):
                continue
            nxt_name = user.target
            nxt = parent._modules.get(nxt_name)
            if nxt is None:
                continue
            only_here = len(calls.get(nxt_name, [])) == 1 and w.uses[id(nxt)] == 1
            if fold_bn and only_here and isinstance(nxt, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and \
                    w.uses[id(child)] == 1 and _foldable(child, nxt):
                from .nn.norm import fold_conv_bn
                fold_conv_bn(child, nxt)
                w.report.folded.append((w.name(child), w.name(nxt)))
                act = getattr(nxt, "act", None)  # a BatchNormAct2d keeps its activation
                setattr(parent, nxt_name, Activation(act, getattr(nxt, "alpha", None)) if act else nn.Identity())
            elif only_here:
                if _fuse_norm_act(w, child, nxt):
                    setattr(parent, nxt_name, nn.Identity())
            elif not rewritten and not _has_hooks(nxt) and _act_of(nxt) is not None and \
                    _fuse_norm_act(w, child, nxt, f"{type(nxt).__name__} call (the module is applied elsewhere too)"):
                dropped.append(user)
        if dropped:
            for user in dropped:
                user.replace_all_uses_with(user.args[0])
                graph.erase_node(user)
            graph.lint()
            object.__setattr__(parent, "forward", _TracedForward.from_graph(parent, graph))
            w.report.replaced.append((w.name(parent), f"forward re-generated by torch.fx without {len(dropped)} "
                                                      "activation call(s) now fused into the norm before them"))


def _foldable(conv, bn) -> bool:
    from .fold import _foldable as f
    return f(conv, bn)


def _diffusers_blocks(w: _Walk, channels_last: bool) -> None:
    try:
        from .integrations import diffusers as dif
    except ImportError:  # diffusers not installed
        return
    from .backends import implementations
    for m in list(w.model.modules()):
        if isinstance(m, dif.FusedResnetBlock2D):  # optimized before
            w.claimed.update((id(m.norm1), id(m.norm2)))
        entry = dif.FUSED_BLOCKS.get(type(m))
        if entry is None:
            continue
        fused_cls, problem, passes, what = entry
        why = problem(m)
        if why is None and fused_cls is dif.FusedTransformer2DModel and not channels_last:
            why = "only useful with channels_last activations (not chosen for this model)"
        if why is None and fused_cls in (dif.FusedBasicTransformerBlock, dif.FusedGEGLU):
            op = "layer_norm" if fused_cls is dif.FusedBasicTransformerBlock else "geglu"
            if "cpu" not in implementations(op) and _device_type(m) == "cpu":
                why = f"gankern.{op} has no native CPU kernel in this build (the reference would be slower)"
        if why is None and _has_hooks(m):
            why = "has hooks"
        if why is None and fused_cls in (dif.FusedResnetBlock2D, dif.FusedResnetBlockCondNorm2D):
            why = w.why_not_fuse(m.norm1, m.nonlinearity) or w.why_not_fuse(m.norm2)
        if why is not None:
            w.left(m, f"{type(m).__name__} left as diffusers runs it: {why}")
            continue
        m.__class__ = fused_cls
        w.replaced(m, what, passes)
        if fused_cls is dif.FusedResnetBlock2D:
            w.claimed.update((id(m.norm1), id(m.norm2)))
    _fuse_named_pairs(w, dif.NORM_ACT_ATTRIBUTES)
    for m in w.model.modules():
        if type(m).__name__ == "SpatialNorm":
            w.left(m, "SpatialNorm: its scale and shift are full tensors (convolutions of the latent), which the "
                      "norm kernel does not take; its GroupNorm runs gankern's kernel")
        elif type(m).__name__ in ("AdaLayerNorm", "AdaLayerNormZero", "AdaLayerNormSingle", "AdaLayerNormContinuous"):
            w.left(m, f"{type(m).__name__}: per-sample LayerNorm modulation is not covered (gankern.layer_norm takes "
                      "[D] affine parameters only)")


def _device_type(m: nn.Module) -> str:
    p = next(m.parameters(), None)
    return "cpu" if p is None else p.device.type


def _remaining_group_norms(w: _Walk) -> None:
    """Every other GroupNorm runs gankern's (faster) GroupNorm kernel, without activation."""
    for m in list(w.model.modules()):
        if type(m) is nn.GroupNorm and id(m) not in w.claimed:
            if _has_hooks(m):
                w.left(m, "GroupNorm with hooks")
                continue
            _make_group_norm_act(m, None, None)
            w.replaced(m, "GroupNormAct(act=None): gankern's GroupNorm kernel (no activation follows it)")


def _apply_channels_last(model: nn.Module, w: _Walk, channels_last: bool | None) -> bool:
    """Decide the layout of each measured model class inside `model` (the outermost match wins)
    and give the chosen ones NHWC convolution weights; True if any went channels_last."""
    if channels_last is not None:
        targets = [(model, channels_last, f"asked for (channels_last={channels_last})")]
    else:
        targets, inside = [], set()
        for m in model.modules():
            decision = _CHANNELS_LAST.get(type(m).__name__)
            if decision is not None and id(m) not in inside:
                targets.append((m, *decision))
                inside.update(id(s) for s in m.modules())
        if not targets:
            w.report.layouts.append((w.name(model), "unchanged (no measurement for this model class)"))
    any_cl = False
    for m, cl, why in targets:
        if not cl:
            w.report.layouts.append((w.name(m), f"NCHW kept: {why}"))
            continue
        # Assigning .data keeps the Parameter objects (optimizers and ties stay valid).
        for conv in m.modules():
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and conv.weight.ndim == 4:
                conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
        w.report.layouts.append((w.name(m), f"channels_last convolution weights: {why}"))
        any_cl = True
    return any_cl


def _optimize_module(model: nn.Module, report: OptimizeReport, prefix: str, fold_bn: bool,
                     channels_last: bool | None) -> None:
    if fold_bn:
        training = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        if training:
            raise ValueError(f"fold_bn=True needs an eval-mode model (call .eval()); in training mode: {training[:3]}")
        report.folded += [(".".join(p for p in (prefix, c) if p), ".".join(p for p in (prefix, b) if p))
                          for c, b in fold_batchnorm(model)]
    w = _Walk(model, report, prefix)
    cl = _apply_channels_last(model, w, channels_last)
    _diffusers_blocks(w, cl)
    _fuse_sequentials(w)
    _fx_pairs(w, fold_bn)
    _remaining_group_norms(w)
    for m in model.modules():
        if type(m) in (nn.BatchNorm2d,) and not fold_bn:
            w.left(m, "BatchNorm2d with no activation module right after it (use fold_bn=True in eval mode "
                      "to fold it into its convolution)")


def _is_pipeline(obj) -> bool:
    return not isinstance(obj, nn.Module) and hasattr(obj, "components") and hasattr(obj, "scheduler")


def _swap_scheduler(pipe, report: OptimizeReport) -> None:
    from . import schedulers
    old = getattr(pipe, "scheduler", None)
    if old is None:
        return
    name = type(old).__name__
    cls = getattr(schedulers, name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, schedulers.Scheduler):
        report.scheduler = f"{name} kept: gankern has no drop-in equivalent"
        return
    if isinstance(old, schedulers.Scheduler):
        report.scheduler = f"already gankern.schedulers.{name}"
        return
    new = cls.from_config(old.config)
    try:
        pipe.scheduler = new
    except Exception:  # a pipeline whose __setattr__ refuses a class outside diffusers' registry
        object.__setattr__(pipe, "scheduler", new)
    report.scheduler = f"{name} -> gankern.schedulers.{name} (same config, fused step)"


def _cast_inputs(module, args, kwargs):
    """Forward pre-hook of a model optimized with dtype=: floating-point tensor arguments are cast
    to the model's compute dtype (module-level, so the hooked model still pickles)."""
    dtype = module.gankern_dtype

    def cast(v):
        return v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != dtype else v
    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _convert_dtype(model: nn.Module, dtype: torch.dtype, name: str, report: OptimizeReport, hook: bool) -> None:
    """Parameters and floating buffers to `dtype` through .data (the objects are kept)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point() and t.dtype != dtype:
            t.data = t.data.to(dtype)
    if hook:
        # The model's forward and its direct children: other entry points such as
        # AutoencoderKL.decode start with a child (post_quant_conv, decoder).
        for m in (model, *model.children()):
            if getattr(m, "gankern_dtype", None) is None:
                m.register_forward_pre_hook(_cast_inputs, with_kwargs=True)
            object.__setattr__(m, "gankern_dtype", dtype)
    object.__setattr__(model, "gankern_dtype", dtype)
    report.layouts.append((name or "<root>", f"parameters in {dtype} (opt-in: numerics change, relative error "
                                              f"~1e-2 against float32{'; inputs cast by a pre-hook' if hook else ''})"))


def optimize(obj, *, fold_bn: bool = False, channels_last: bool | None = None, inplace: bool = True,
             swap_scheduler: bool = True, dtype: torch.dtype | None = None):
    """Swap the hot paths of a model or pipeline for gankern's fused layers.

    Args:
        obj: an nn.Module, or a diffusers DiffusionPipeline (its module components are optimized and
            its scheduler replaced by gankern's equivalent when one exists).
        fold_bn: fold each eval-mode BatchNorm into the convolution before it. This removes the
            BatchNorm's state_dict keys, so it is never done unless asked; needs eval mode.
        channels_last: None chooses per model class from measurements (_CHANNELS_LAST); True/False
            forces NHWC convolution weights on or leaves the layout alone.
        inplace: False optimizes a deep copy and returns it (the original is untouched).
        swap_scheduler: for pipelines, replace the scheduler with gankern.schedulers' equivalent.
        dtype: opt-in compute dtype, e.g. torch.bfloat16 on CPUs with bf16 units (AVX512-BF16,
            AMX): parameters are converted in place (same Parameter objects) and a module's
            floating-point inputs are cast by a forward pre-hook; outputs come back in `dtype`.
            This changes the numerics (bf16 keeps 8 bits of mantissa). Pipelines convert their
            module components and handle their latents' dtype themselves.
    Returns:
        the OptimizeReport (inplace=True), or the optimized copy (inplace=False). Either way the
        report is also kept as `obj.gankern_report`.
    """
    if not isinstance(obj, nn.Module) and not _is_pipeline(obj):
        raise TypeError(f"model must be a torch.nn.Module or a diffusers pipeline, got {type(obj).__name__}")
    if not isinstance(fold_bn, bool):
        raise TypeError(f"fold_bn must be a bool, got {type(fold_bn).__name__}")
    if channels_last is not None and not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be None or a bool, got {type(channels_last).__name__}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be None or a floating-point torch.dtype, got {dtype!r}")
    if not inplace:
        obj = copy.deepcopy(obj)
    report = OptimizeReport()
    if isinstance(obj, nn.Module):
        if dtype is not None:
            _convert_dtype(obj, dtype, "", report, hook=True)
        _optimize_module(obj, report, "", fold_bn, channels_last)
    else:
        for name, comp in obj.components.items():
            if isinstance(comp, nn.Module):
                if dtype is not None:
                    _convert_dtype(comp, dtype, name, report, hook=False)
                _optimize_module(comp, report, name, fold_bn, channels_last)
        if swap_scheduler:
            _swap_scheduler(obj, report)
    object.__setattr__(obj, "gankern_report", report)
    return report if inplace else obj
