"""Before/after table of `gankern bench` runs (their JSON files), for "no regression" checks.

    python benchmarks/compare_runs.py --before base1.json base2.json --after new1.json new2.json

Run the trees alternately in one sitting on a quiet machine (before, after, before, after): one
run per tree says little on a 2-core VM, where a case's time can move 1.5x between runs. Per case,
the table gives each run's gankern median, the ratio of the best before to the best after (> 1:
faster now) and the after run's speed against eager. A case is a *repeated regression* only when
every after run is slower than every before run.
"""
from __future__ import annotations

import argparse
import json
import statistics


def _load(paths):
    runs = []
    for p in paths:
        try:
            with open(p) as f:
                doc = json.load(f)
            results = doc["results"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"compare_runs: {p} is not a `gankern bench` JSON file ({type(e).__name__}: {e})")
        runs.append({(r["op"], r["variant"], tuple(r["shape"]), r["dtype"]): r for r in results
                     if r.get("gankern_ms") is not None})
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", nargs="+", required=True, help="bench JSON files of the old tree")
    ap.add_argument("--after", nargs="+", required=True, help="bench JSON files of the new tree")
    ap.add_argument("--slower", type=float, default=0.9, help="ratio under which a case counts as slower")
    args = ap.parse_args()
    before, after = _load(args.before), _load(args.after)
    keys = [k for k in after[0] if all(k in r for r in before + after)]
    print("| op | case | shape | dtype | before ms | after ms | before/after | after vs eager (eager ms) |")
    print("|---|---|---|---|---|---|---|---|")
    ratios, repeated = [], []
    for k in keys:
        b = [r[k]["gankern_ms"] for r in before]
        a = [r[k]["gankern_ms"] for r in after]
        ratio = min(b) / min(a)
        ratios.append(ratio)
        if min(a) > max(b):
            repeated.append((k, ratio))
        best = min(after, key=lambda r: r[k]["gankern_ms"])[k]
        eager = best.get("eager_ms")
        vs = f"{eager / best['gankern_ms']:.2f}x ({eager:.3f})" if eager else "-"
        print(f"| {k[0]} | {k[1]} | {'x'.join(map(str, k[2]))} | {k[3]} | {' / '.join(f'{t:.3f}' for t in b)} | "
              f"{' / '.join(f'{t:.3f}' for t in a)} | {ratio:.2f}x | {vs} |")
    if not ratios:
        raise SystemExit("compare_runs: no case is in every run")
    print(f"\n{len(ratios)} cases; geometric mean {statistics.geometric_mean(ratios):.2f}x; min {min(ratios):.2f}x, "
          f"max {max(ratios):.2f}x; {sum(r < args.slower for r in ratios)} below {args.slower}x.")
    print("Repeated regressions (every after run slower than every before run): "
          + (", ".join(f"{k[0]} {k[1]} {'x'.join(map(str, k[2]))} ({r:.2f}x)" for k, r in repeated) or "none"))


if __name__ == "__main__":
    main()
