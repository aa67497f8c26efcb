"""One task per model: how to build it, its optimizers, one training step and how it generates.

A task owns one nn.Module (`self.model`) whose state_dict is what checkpoints hold, the same keys
fused or not. Under torch.distributed the parts that run forward in a step are wrapped in
DistributedDataParallel (`self.ddp(...)`); `self.model` stays the plain module.
"""
from __future__ import annotations

import abc
import contextlib
import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import models as M
from .errors import UsageError


class _Method(nn.Module):
    """Calls model.<method> through forward, so DistributedDataParallel sees the call."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *args, **kwargs):
        return getattr(self.model, self.method)(*args, **kwargs)


class Task(abc.ABC):
    name = ""
    defaults: dict = {}            # model hyperparameters (stored in the checkpoint)
    train_defaults = dict(epochs=10, batch_size=64, lr=2e-4)
    reconstructs = False           # has reconstruct/anomaly_score (eval reports them)

    def __init__(self, config: dict, fused: bool, device: torch.device, precision: str = "fp32"):
        self.config, self.fused, self.device = config, fused, device
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.world_size = torch.distributed.get_world_size() if self.distributed else 1
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.model = self.build().to(device)

    # ---- every task implements these ----------------------------------------------------------------------
    @abc.abstractmethod
    def build(self) -> nn.Module:
        ...

    @abc.abstractmethod
    def optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        ...

    def prepare(self) -> None:
        """Wrap for DDP (after the optimizers exist)."""

    @abc.abstractmethod
    def step(self, x: Tensor, y: Tensor, opts: dict) -> dict[str, float]:
        ...

    @abc.abstractmethod
    @torch.no_grad()
    def generate(self, n: int, seed: int, **kw) -> Tensor:
        ...

    def end_epoch(self, train_images: Tensor) -> None:
        """Hook after each epoch (before the checkpoint)."""

    def load_model_state(self, state: dict) -> None:
        """Loads a checkpoint's model state_dict (strict)."""
        self.model.load_state_dict(state)

    # ---- shared ----------------------------------------------------------------------------
    def ddp(self, module: nn.Module, broadcast_buffers: bool = True) -> nn.Module:
        """module under DistributedDataParallel. broadcast_buffers=True copies rank 0's buffers
        (running statistics, w_avg) into every process before each forward, in place."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=broadcast_buffers)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def backward_step(self, loss: Tensor, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()


def _adam(params, lr, betas=(0.5, 0.999)):
    return torch.optim.Adam(params, lr=lr, betas=betas)


class DCGANTask(Task):
    name = "dcgan"
    defaults = dict(nz=64, ngf=32, ndf=32)
    # batch 16: on the 1528 training digits, batch 64 gives too few updates per epoch (its samples
    # were still noise after 4 epochs; batch 16 draws digit shapes by epoch 4)
    train_defaults = dict(epochs=10, batch_size=16, lr=2e-4)

    def build(self):
        c = self.config
        return M.DCGAN(c["image_size"], c["channels"], c["nz"], c["ngf"], c["ndf"], fused=self.fused)

    def optimizers(self, lr):
        return {"g": _adam(self.model.generator.parameters(), lr), "d": _adam(self.model.discriminator.parameters(), lr)}

    def prepare(self):
        self.G, self.D = self.ddp(self.model.generator), self.ddp(self.model.discriminator)

    def step(self, x, y, opts):
        b = x.shape[0]
        z = torch.randn(b, self.config["nz"], 1, 1, device=self.device)
        with self.autocast():
            fake = self.G(z)
            # discriminator: real -> 1, fake -> 0 (separate batches, as the classic example)
            d_real, d_fake = self.D(x), self.D(fake.detach())
            loss_d = (F.binary_cross_entropy_with_logits(d_real.float(), torch.ones_like(d_real.float()))
                      + F.binary_cross_entropy_with_logits(d_fake.float(), torch.zeros_like(d_fake.float())))
        self.backward_step(loss_d, opts["d"])
        with self.autocast():
            d_gen = self.D(fake).float()
            loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))  # non-saturating
        self.backward_step(loss_g, opts["g"])
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}

    @torch.no_grad()
    def generate(self, n, seed, **kw):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.config["nz"], 1, 1, generator=g).to(self.device)
        G = self.model.generator
        was = G.training
        G.eval()
        try:
            return torch.cat([G(zb) for zb in z.split(256)])
        finally:
            G.train(was)


class StyleGAN2Task(Task):
    """StyleGAN2's training (Karras et al. 2020): non-saturating logistic loss; lazy R1 on the reals
    every r1_interval minibatches, gamma r1_gamma; lazy path-length regularization every pl_interval
    minibatches on batch / pl_batch_shrink samples; style mixing. A lazy regularizer's loss is
    multiplied by its interval, and Adam's learning rate and betas are adjusted by
    interval / (interval + 1), as the paper's lazy regularization does. The phases of one
    minibatch: G main, G reg (when due), D main, D reg (when due); D main reuses the G phase's
    images, detached; then the generator EMA is updated (`update_ema`). The minibatch count, the
    path-length mean and the EMA generator (`model.generator_ema`) are in the model's state_dict,
    so a checkpoint resumes the schedule exactly. Samples come from the EMA generator."""
    name = "stylegan2"
    # ema_kimg / ema_rampup: the paper's (half-life 10k images, ramp-up 0.05). On digits (1528
    # training images; 10 epochs of batch 32 = 15k images) the ramp-up is what binds: the half-life
    # is 5% of the images seen, ~750 images (~24 minibatches) at the end of the default run.
    defaults = dict(z_dim=64, w_dim=64, mapping_layers=2, channel_base=1024, channel_max=64, r1_gamma=0.01,
                    r1_interval=16, pl_weight=2.0, pl_interval=4, pl_batch_shrink=2, pl_decay=0.01,
                    style_mixing_prob=0.9, ema_kimg=10.0, ema_rampup=0.05)
    train_defaults = dict(epochs=10, batch_size=32, lr=2e-3)

    def __init__(self, config: dict, fused: bool, device: torch.device, precision: str = "fp32"):
        # configs of checkpoints from before the EMA get its defaults
        config = dict({k: StyleGAN2Task.defaults[k] for k in ("ema_kimg", "ema_rampup")}, **config)
        super().__init__(config, fused, device, precision)
        # The EMA generator is a submodule of the model, so model.state_dict() (the checkpoint) holds
        # it, under the same keys fused or not; it is never trained, only averaged (update_ema).
        self.model.generator_ema = copy.deepcopy(self.model.generator).requires_grad_(False)

    def build(self):
        c = self.config
        return M.StyleGAN2(c["image_size"], c["channels"], c["z_dim"], c["w_dim"], c["mapping_layers"],
                           c["channel_base"], c["channel_max"], fused=self.fused)

    def _lazy_adam(self, params, lr, interval):
        ratio = interval / (interval + 1) if interval else 1.0
        return torch.optim.Adam(params, lr=lr * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8)

    def optimizers(self, lr):
        c, m = self.config, self.model
        return {"g": self._lazy_adam(m.generator.parameters(), lr, c["pl_interval"] if c["pl_weight"] else 0),
                "d": self._lazy_adam(m.discriminator.parameters(), lr, c["r1_interval"] if c["r1_gamma"] else 0)}

    def prepare(self):
        self.G = self.ddp(_Method(self.model.generator, "train_forward"))
        # D's only buffers are its resampling filters, equal on every process. Broadcasting them
        # rewrites them in place before each forward, and D runs twice (reals, fakes) before one
        # backward that reads the filters its first run saved: autograd refuses (seen with torch 2.11).
        self.D = self.ddp(self.model.discriminator, broadcast_buffers=False)

    def _reg_step(self, loss: Tensor, opt: torch.optim.Optimizer, module: nn.Module) -> None:
        """A regularizer's update. Its gradient penalty differentiates through the plain module
        (DistributedDataParallel does not support torch.autograd.grad), so under torch.distributed
        the gradients are averaged here: one all_reduce of them all, flattened (a call per
        parameter costs a round trip each). Every process has the same parameters with a gradient
        (the same code ran), so the flattened layouts agree."""
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.distributed:
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= self.world_size
            for g, avg in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(avg.view_as(g))
        self.scaler.step(opt)
        self.scaler.update()

    @torch.no_grad()
    def update_ema(self, batch: int) -> None:
        """StyleGAN2's generator EMA after a minibatch of `batch` images (all processes together):
        ema = lerp(G, ema, beta) with beta = 0.5 ** (batch / half_life); the half-life is ema_kimg
        thousand images, but at most ema_rampup times the images seen before this minibatch (the
        ramp-up: early on the average forgets the random start quickly; after the first minibatch
        the EMA is G). Buffers (w_avg, noise_const, filters) are copied. Under DDP every process
        does this from the same parameters (the step left them equal): no communication needed."""
        c, m = self.config, self.model
        half_life = c["ema_kimg"] * 1000
        if c["ema_rampup"]:
            half_life = min(half_life, int(m.num_minibatches) * batch * c["ema_rampup"])
        beta = 0.5 ** (batch / half_life) if half_life > 0 else 0.0
        for p_ema, p in zip(m.generator_ema.parameters(), m.generator.parameters()):
            p_ema.copy_(p.lerp(p_ema, beta))
        for b_ema, b in zip(m.generator_ema.buffers(), m.generator.buffers()):
            b_ema.copy_(b)

    def load_model_state(self, state: dict) -> None:
        # a checkpoint from before the EMA existed: the EMA starts as its generator
        if not any(k.startswith("generator_ema.") for k in state):
            state = dict(state, **{"generator_ema." + k[len("generator."):]: v for k, v in state.items()
                                   if k.startswith("generator.")})
        self.model.load_state_dict(state)

    def _toggle(self, module: nn.Module, on: bool) -> None:
        # the other network's parameter gradients are not needed in a phase (StyleGAN2 turns them
        # off). Under DDP too: the network whose gradients are off runs as its plain module
        # (`_without_ddp`), so its DDP reducer never waits for them.
        module.requires_grad_(on)

    @staticmethod
    def _without_ddp(module: nn.Module) -> nn.Module:
        """The module a DistributedDataParallel wraps (a network that only passes gradients
        through in a phase needs no gradient averaging), else the module itself (e.g. compiled)."""
        from torch.nn.parallel import DistributedDataParallel
        return module.module if isinstance(module, DistributedDataParallel) else module

    def step(self, x, y, opts):
        c, m = self.config, self.model
        i = int(m.num_minibatches)
        out = {}
        fake, out["loss_g"] = self.g_main(x.shape[0], opts)
        if c["pl_weight"] and i % c["pl_interval"] == 0:
            out["loss_pl"] = self.g_reg(x.shape[0], opts)
        out["loss_d"] = self.d_main(x, fake, opts)
        if c["r1_gamma"] and i % c["r1_interval"] == 0:
            out["loss_r1"] = self.d_reg(x, opts)
        self.update_ema(x.shape[0] * self.world_size)
        m.num_minibatches += 1
        return out

    # the phases of a minibatch (public for gankern/bench/models_stylegan.py)
    def g_main(self, batch: int, opts) -> tuple[Tensor, float]:
        """softplus(-D(G(z))), the non-saturating logistic loss; returns the images (for D main)."""
        c, D = self.config, self.model.discriminator
        self._toggle(D, False)
        with self.autocast():
            fake, _ = self.G(torch.randn(batch, c["z_dim"], device=self.device), c["style_mixing_prob"])
            loss = F.softplus(-self._without_ddp(self.D)(fake).float()).mean()
        self.backward_step(loss, opts["g"])
        self._toggle(D, True)
        return fake.detach(), loss.item()

    def g_reg(self, batch: int, opts) -> float:
        """The path-length penalty on batch / pl_batch_shrink new samples, times pl_interval."""
        c, m = self.config, self.model
        G = m.generator
        with self.autocast():
            ws = G.mixed_ws(torch.randn(max(batch // c["pl_batch_shrink"], 1), c["z_dim"], device=self.device),
                            c["style_mixing_prob"])
            pen, new_mean = self.path_length(lambda w: G.synthesis(w, "random"), ws, m.pl_mean,
                                             decay=c["pl_decay"], weight=c["pl_weight"])
        m.pl_mean.copy_(new_mean)
        loss = pen.float().mean()
        self._reg_step(loss * c["pl_interval"], opts["g"], G)
        return loss.item()

    def d_main(self, x: Tensor, fake: Tensor, opts) -> float:
        """softplus(D(fake)) + softplus(-D(x))."""
        G = self.model.generator
        self._toggle(G, False)
        with self.autocast():
            loss = F.softplus(self.D(fake).float()).mean() + F.softplus(-self.D(x).float()).mean()
        self.backward_step(loss, opts["d"])
        self._toggle(G, True)
        return loss.item()

    def d_reg(self, x: Tensor, opts) -> float:
        """R1 = gamma / 2 * ||grad_x D(x)||^2 at the reals, times r1_interval."""
        c, D = self.config, self.model.discriminator
        with self.autocast():
            r1 = self.r1(D, x, gamma=c["r1_gamma"]).float().mean()
        self._reg_step(r1 * c["r1_interval"], opts["d"], D)
        return r1.item()

    @staticmethod
    def r1(D, x, gamma):
        from ..regularizers import r1_penalty
        return r1_penalty(D, x, gamma=gamma)

    @staticmethod
    def path_length(synthesis, ws, pl_mean, decay, weight):
        from ..regularizers import path_length_penalty
        # all_processes: under DDP pl_mean follows the whole batch's mean path length, so it stays
        # equal on every process (it is saved from rank 0) and the penalty is the single-process one
        return path_length_penalty(synthesis, ws, pl_mean, decay=decay, weight=weight, all_processes=True)

    @torch.no_grad()
    def generate(self, n, seed, truncation_psi: float = 1.0, **kw):
        """Samples of the EMA generator (as the paper's results), with its constant noise."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.config["z_dim"], generator=g).to(self.device)
        return _eval_call(self.model.generator_ema, lambda G: torch.cat(
            [G(zb, truncation_psi, noise_mode="const") for zb in z.split(256)]).clamp(-1, 1))


class StyleGAN3Task(StyleGAN2Task):
    """StyleGAN3-T (Karras et al. 2021) trained with StyleGAN2Task's loop: the non-saturating
    logistic loss and lazy R1 on the reals exactly as StyleGAN2 (same gamma and interval), the
    generator gankern.models.StyleGAN3Generator, the discriminator StyleGAN2's. As the paper's
    StyleGAN3 configurations: no path-length regularization (pl_weight 0, so the generator's Adam
    is not lazily adjusted) and no style mixing. The generator's magnitude EMAs and w_avg update in
    its G-phase forward (train_forward). Only build() and the defaults differ from StyleGAN2Task."""
    name = "stylegan3"
    defaults = dict(z_dim=64, w_dim=64, mapping_layers=2, num_layers=6, num_critical=2, channel_base=1024,
                    channel_max=32, margin=10, d_channel_base=1024, d_channel_max=64, r1_gamma=0.01,
                    r1_interval=16, pl_weight=0.0, pl_interval=4, pl_batch_shrink=2, pl_decay=0.01,
                    style_mixing_prob=0.0)
    train_defaults = dict(epochs=10, batch_size=32, lr=2e-3)

    def build(self):
        c = self.config
        return M.StyleGAN3(c["image_size"], c["channels"], c["z_dim"], c["w_dim"], c["mapping_layers"],
                           c["num_layers"], c["num_critical"], c["channel_base"], c["channel_max"], c["margin"],
                           c["d_channel_base"], c["d_channel_max"], fused=self.fused)


class VAETask(Task):
    name = "vae"
    model_cls = M.ConvVAE
    defaults = dict(latent_dim=16, widths=[16, 32, 64], num_groups=8, beta=1.0)
    train_defaults = dict(epochs=10, batch_size=64, lr=1e-3)
    reconstructs = True

    def build(self):
        c = self.config
        return self.model_cls(c["image_size"], c["channels"], c["latent_dim"], tuple(c["widths"]), c["num_groups"],
                              fused=self.fused)

    def optimizers(self, lr):
        return {"vae": torch.optim.Adam(self.model.parameters(), lr=lr)}

    def prepare(self):
        self.loss_fn = self.ddp(_Method(self.model, "loss"))

    def step(self, x, y, opts):
        with self.autocast():
            loss, parts = self.loss_fn(x, self.config["beta"])
        self.backward_step(loss, opts["vae"])
        out = {"loss": loss.item(), "recon": parts["recon"].item()}
        if self.model.variational:
            out["kl"] = parts["kl"].item()
        return out

    @torch.no_grad()
    def generate(self, n, seed, **kw):
        return _eval_call(self.model, lambda m: torch.cat(
            [m.sample(len(c), torch.Generator().manual_seed(seed + i)) for i, c in enumerate(torch.arange(n).split(256))]))

    @property
    def autoencoder(self):
        return self.model

    @torch.no_grad()
    def end_epoch(self, train_images):
        ae = self.autoencoder
        if not ae.variational:   # the Gaussian the autoencoder samples from: its training codes
            codes = _eval_call(ae, lambda m: torch.cat(
                [m.code(xb.to(self.device)) for xb in train_images[:1024].split(256)]))
            ae.code_mean.copy_(codes.mean(0))
            ae.code_std.copy_(codes.std(0) if codes.shape[0] > 1 else torch.ones_like(codes[0]))


class AutoencoderTask(VAETask):
    name = "autoencoder"
    model_cls = M.Autoencoder
    defaults = dict(latent_dim=16, widths=[16, 32, 64], num_groups=8, beta=0.0)


class VAEGANTask(VAETask):
    name = "vaegan"
    defaults = dict(latent_dim=16, widths=[16, 32, 64], num_groups=8, beta=1.0, ndf=32, adv_weight=0.05)
    train_defaults = dict(epochs=10, batch_size=64, lr=5e-4)

    def build(self):
        c = self.config
        return M.VAEGAN(c["image_size"], c["channels"], c["latent_dim"], tuple(c["widths"]), c["num_groups"],
                        c["ndf"], fused=self.fused)

    def optimizers(self, lr):
        return {"vae": torch.optim.Adam(self.model.vae.parameters(), lr=lr),
                "d": _adam(self.model.discriminator.parameters(), lr * 0.4)}

    def prepare(self):
        self.loss_fn = self.ddp(_Method(self.model.vae, "loss"))
        self.D = self.ddp(self.model.discriminator)

    def step(self, x, y, opts):
        with self.autocast():
            loss_vae, parts = self.loss_fn(x, self.config["beta"])
            d_rec = self.D(parts["x_hat"]).float()
            # the VAE's adversarial term is per pixel-patch; scaled to the sum-over-pixels recon loss
            adv = F.binary_cross_entropy_with_logits(d_rec, torch.ones_like(d_rec)) * x[0].numel()
            loss = loss_vae + self.config["adv_weight"] * adv
        self.backward_step(loss, opts["vae"])
        with self.autocast():
            d_real, d_fake = self.D(x).float(), self.D(parts["x_hat"].detach()).float()
            loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                      + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        self.backward_step(loss_d, opts["d"])
        return {"loss": loss.item(), "recon": parts["recon"].item(), "kl": parts["kl"].item(),
                "adv": adv.item() / x[0].numel(), "loss_d": loss_d.item()}

    def generate(self, n, seed, **kw):
        return _eval_call(self.model.vae, lambda m: torch.cat(
            [m.sample(len(c), torch.Generator().manual_seed(seed + i)) for i, c in enumerate(torch.arange(n).split(256))]))

    @property
    def autoencoder(self):
        return self.model.vae


class DDPMTask(Task):
    name = "ddpm"
    defaults = dict(block_out_channels=[16, 32, 64], layers_per_block=1,
                    down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
                    up_block_types=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"], norm_num_groups=8,
                    num_train_timesteps=1000, sample_steps=50)
    train_defaults = dict(epochs=15, batch_size=64, lr=2e-3)

    def build(self):
        c = self.config
        return build_unet(sample_size=c["image_size"], in_channels=c["channels"], out_channels=c["channels"],
                          block_out_channels=tuple(c["block_out_channels"]), layers_per_block=c["layers_per_block"],
                          down_block_types=tuple(c["down_block_types"]), up_block_types=tuple(c["up_block_types"]),
                          norm_num_groups=c["norm_num_groups"], fused=self.fused)

    def optimizers(self, lr):
        return {"unet": torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)}

    def prepare(self):
        from ..schedulers import DDPMScheduler
        self.unet = self.ddp(self.model)
        self.alphas_cumprod = DDPMScheduler(num_train_timesteps=self.config["num_train_timesteps"]) \
            .alphas_cumprod.to(self.device)

    def step(self, x, y, opts):
        from ..ops.diffusion import add_noise, diffusion_loss
        acp = self.alphas_cumprod
        t = torch.randint(0, acp.shape[0], (x.shape[0],), device=self.device)
        noise = torch.randn_like(x)
        with self.autocast():
            if self.fused:
                x_t = add_noise(x, noise, t, acp)
                loss = diffusion_loss(self.unet(x_t, t).sample.float(), x, noise, t, acp)
            else:
                a = acp[t].view(-1, 1, 1, 1)
                x_t = a.sqrt() * x + (1 - a).sqrt() * noise
                loss = F.mse_loss(self.unet(x_t, t).sample.float(), noise)
        self.backward_step(loss, opts["unet"])
        return {"loss": loss.item()}

    @torch.no_grad()
    def generate(self, n, seed, steps: int | None = None, scheduler: str = "ddim", progress: bool = False, **kw):
        from ..sampling import sample
        sched = make_scheduler(scheduler, self.config["num_train_timesteps"])
        steps = steps or self.config["sample_steps"]
        unet = self.model
        fn = lambda x, t: unet(x, t).sample  # noqa: E731
        c = self.config
        out = []
        was = unet.training
        unet.eval()
        try:
            for i, chunk in enumerate(torch.arange(n).split(256)):
                shape = (len(chunk), c["channels"], c["image_size"], c["image_size"])
                out.append(sample(fn, sched, shape, steps, seed=seed + i, progress=progress, device=self.device))
        finally:
            unet.train(was)
        return torch.cat(out).clamp(-1, 1)


SCHEDULERS = ("ddim", "ddpm", "euler", "dpm++")


def make_scheduler(name: str, num_train_timesteps: int):
    from .. import schedulers as S
    cls = {"ddim": S.DDIMScheduler, "ddpm": S.DDPMScheduler, "euler": S.EulerDiscreteScheduler,
           "dpm++": S.DPMSolverMultistepScheduler}.get(name)
    if cls is None:
        raise UsageError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {name!r}")
    return cls(num_train_timesteps=num_train_timesteps)


def build_unet(fused: bool, **config) -> nn.Module:
    """gankern.models.UNet2DModel(**config, fused=...) (diffusers' UNet2DModel keywords). Where that
    class is absent from this build, diffusers' own UNet2DModel stands in, patched by
    gankern.optimize() when fused (the same state_dict keys either way)."""
    cls = getattr(M, "UNet2DModel", None)
    if cls is not None:
        return cls(**config, fused=fused)
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise UsageError("the ddpm model needs gankern.models.UNet2DModel or diffusers (pip install diffusers)") \
            from None
    unet = UNet2DModel(**config)
    if fused:
        from ..optimize import optimize
        optimize(unet)
    return unet


def _eval_call(model: nn.Module, fn: Callable):
    was = model.training
    model.eval()
    try:
        return fn(model)
    finally:
        model.train(was)


TASKS = {t.name: t for t in (DCGANTask, StyleGAN2Task, StyleGAN3Task, VAETask, AutoencoderTask, VAEGANTask,
                             DDPMTask)}
