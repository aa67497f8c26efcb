"""Kept for old command lines: `python -m gankern.bench.models_optimize [--full] [--profile] ...` is
`gankern bench --models ...` (the diffusers cases live in gankern/bench/models_diffusers.py)."""
import sys

if __name__ == "__main__":
    from gankern.cli import main
    sys.exit(main(["bench", "--models", *sys.argv[1:]]))
