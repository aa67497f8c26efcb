"""The `gankern` command (also `python -m gankern`): `info`, `bench`, `train`, `sample` and `eval`."""
from __future__ import annotations

import argparse
import math
import platform
import sys

import torch


def info() -> int:
    import gankern
    from gankern import _native
    from gankern.bench.runner import _cpu_name
    print(f"gankern {gankern.__version__}")
    print(f"python  {platform.python_version()}  ({sys.executable})")
    print(f"torch   {torch.__version__}  (CUDA {torch.version.cuda or 'none'})")
    try:
        import triton
        print(f"triton  {triton.__version__}")
    except ImportError:
        print("triton  not installed")
    print("\nbackends:")
    for status in gankern.backends().values():
        print(f"  {status}")
    print("\ndevices:")
    clone = (f", kernels: {_native.cpu.cpu_clone()} clone, huge-page hint "
             f"{'on' if _native.cpu.huge_pages() else 'off'}") if _native.cpu is not None else ""
    print(f"  cpu     {_cpu_name()}, {torch.get_num_threads()} threads{clone}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"  cuda:{i}  {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        print("  cuda    none visible to PyTorch")
    if _native.cuda is not None:
        print(f"\ngankern._cuda: built for sm {_native.cuda.compiled_archs()}, "
              f"CUDA runtime {_native.cuda.runtime_version()}")
    return 0


def _number(kind, what: str, positive: bool):
    """An argparse type: a finite `kind` (int or float), > 0 if `positive` else >= 0; anything else is
    a usage message naming the option (argparse adds the option's name to ArgumentTypeError)."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return v
    return parse


_positive_int = _number(int, "a positive integer", True)
_nonneg_int = _number(int, "a non-negative integer", False)
_positive_float = _number(float, "a positive finite number", True)
positive_seconds = _number(float, "a finite number of seconds > 0", True)


def _add_model_commands(sub) -> None:
    from gankern.train.tasks import SCHEDULERS, TASKS
    models = list(TASKS)
    t = sub.add_parser("train", help="train a model (dcgan, stylegan2, stylegan3, vae, autoencoder, vaegan, ddpm)",
                       description="Train a model; under torchrun, with DistributedDataParallel.")
    t.add_argument("model", choices=models)
    t.add_argument("--data", default="digits", help="'digits' (bundled with scikit-learn), a folder of images or "
                   "an .npz file (default: digits)")
    t.add_argument("--epochs", type=_positive_int, help="epochs in total (default: per model; with --resume, "
                   "as the run was started)")
    t.add_argument("--batch-size", type=_positive_int, help="global batch size, split across processes "
                   "(default: per model, 64; dcgan 16)")
    t.add_argument("--out", default=None, help="run folder (default: runs/MODEL)")
    t.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                   help="gankern's fused ops (default) or plain torch layers (--no-fused)")
    t.add_argument("--seed", type=_nonneg_int, default=0)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    t.add_argument("--lr", type=_positive_float, help="learning rate (default: per model)")
    t.add_argument("--image-size", type=_positive_int, default=32)
    t.add_argument("--channels", type=int, choices=[1, 3], help="default: from the data (folders: 3)")
    t.add_argument("--holdout-class", type=_nonneg_int, help="leave this class out of training (for the "
                   "anomaly-detection AUC of `gankern eval`)")
    t.add_argument("--workers", type=_nonneg_int, default=2, help="DataLoader workers for image folders")
    t.add_argument("--deterministic", action="store_true", help="torch's deterministic algorithms, so that a "
                   "GPU run and its --resume repeat bit for bit (slower; CPU runs always do)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    s = sub.add_parser("sample", help="write samples of a trained model as PNGs (one per sample + grid.png)")
    s.add_argument("model", choices=models)
    s.add_argument("--checkpoint", required=True, help="checkpoint.pt of a run (or the run folder)")
    s.add_argument("--n", type=_positive_int, default=64)
    s.add_argument("--out", default="samples")
    s.add_argument("--steps", type=_positive_int, help="ddpm: sampling steps (default 50)")
    s.add_argument("--scheduler", choices=list(SCHEDULERS), default="ddim", help="ddpm: the sampler")
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--device", choices=["cpu", "cuda"])
    s.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                   help="default: as the model was trained")
    s.add_argument("--no-progress", action="store_true")
    e = sub.add_parser("eval", help="Fréchet distance, class coverage and (VAEs) reconstruction / anomaly AUC")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", help="default: the data the model was trained on")
    e.add_argument("--n", type=_positive_int, default=500, help="samples to generate")
    e.add_argument("--steps", type=_positive_int, help="ddpm: sampling steps (default 50)")
    e.add_argument("--scheduler", choices=list(SCHEDULERS), default="ddim")
    e.add_argument("--seed", type=_nonneg_int, default=0)
    e.add_argument("--device", choices=["cpu", "cuda"])
    e.add_argument("--json", help="also write the report to this file")
    e.add_argument("--no-progress", action="store_true")


def _run_model_command(args) -> int:
    from gankern.train import UsageError, evaluate, sample, train
    try:
        if args.cmd == "train":
            path = train(args.model, args.data, args.epochs, args.batch_size, args.out or f"runs/{args.model}",
                         args.fused, args.seed, args.resume, args.device, args.precision, args.lr, args.image_size,
                         args.channels, args.holdout_class, args.workers, not args.no_progress,
                         deterministic=args.deterministic)
            print(f"checkpoint: {path}")
        elif args.cmd == "sample":
            paths = sample(args.model, args.checkpoint, args.n, args.out, args.steps, args.scheduler, args.seed,
                           args.device, args.fused, not args.no_progress)
            print(f"{len(paths)} samples and grid.png in {args.out}")
        else:
            import json
            report = evaluate(args.checkpoint, args.data, args.n, args.steps, args.scheduler, args.seed,
                              args.device, progress=not args.no_progress)
            for k, v in report.items():
                print(f"{k:28s} {v:.4f}" if isinstance(v, float) else f"{k:28s} {v}")
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(report, f, indent=2)
    except UsageError as e:
        print(f"gankern {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gankern {args.cmd}: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gankern", description="Fused kernels for generative models.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, backends and devices")
    b = sub.add_parser("bench", help="time gankern against eager PyTorch and torch.compile")
    b.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    b.add_argument("--ops", help="comma-separated op families (default: all)")
    b.add_argument("--out", default="bench-out", help="folder for the JSON results and PNG chart")
    b.add_argument("--full", action="store_true", help="every case and shape, not just the quick set")
    b.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    b.add_argument("--budget", type=positive_seconds, help="seconds of timing per measurement (> 0)")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    b.add_argument("--standalone", action="store_true",
                   help="also time each gankern call alone in a fresh process (the 'fresh-process ms' column)")
    b.add_argument("--models", action="store_true", help="end-to-end model cases (training steps, sampling) "
                   "instead of single ops")
    b.add_argument("--profile", action="store_true", help="with --models: also print the torch.profiler "
                   "breakdown (convolution, matmul, attention, gankern ops, other, layout copies) per variant")
    _add_model_commands(sub)
    args = parser.parse_args(argv)
    if args.cmd == "info":
        return info()
    if args.cmd in ("train", "sample", "eval"):
        return _run_model_command(args)
    if args.models:
        from gankern.bench.models import run_models
        run_models(args.device, args.out, not args.no_compile, args.budget, not args.no_progress, args.full,
                   profile=args.profile)
        return 0
    from gankern.bench.runner import run
    run(args.device, args.ops.split(",") if args.ops else None, args.out, args.full, not args.no_compile,
        args.budget, not args.no_progress, args.standalone)
    return 0


if __name__ == "__main__":
    sys.exit(main())
