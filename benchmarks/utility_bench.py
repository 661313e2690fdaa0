"""Utility speed and quality: every arm's Dice, CI, steps used, convergence and seconds for `jsddpm diagnose
utility` on a slice cache (the demo's size, and other sizes for timing).

    .venv/bin/python benchmarks/utility_bench.py                       # demo cohort, demo preset, 48 px
    .venv/bin/python benchmarks/utility_bench.py --cache demo_out/cache --synthetic demo_out/generated
    .venv/bin/python benchmarks/utility_bench.py --cache demo_out/cache --double   # the budget-doubling check
    .venv/bin/python benchmarks/utility_bench.py --sizes 48 160 diagnostics.utility_seeds=1

The real set is a slice cache (the demo cohort's, built here in a temporary folder unless --cache is
given): its train split trains (minus the validation subjects carved from it), its test split scores.
The synthetic set is a generation folder / .npz (--synthetic) or, by default, the cache's val split: a
real-data reference arm, whose Dice should fall inside the real arm's CI. The config is the demo preset
(--config) plus overrides. `--double` runs again with twice the step cap and twice the patience and
prints each arm's change of Dice against its CI (the convergence check: no arm should move beyond it).
At other sizes the 48 px slices are resized (bilinear images, nearest masks): timing only. "train s" is
the seconds spent training and predicting, summed over the arm's seeds (they run in
`diagnostics.utility_workers` processes at once); CPU seconds are the steadier number on a shared
machine. Measured (issue 19): the demo preset's five arms take ~255 CPU s (~130 s wall on 2 idle cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def demo_cache(folder: Path) -> Path:
    from jsddpm.config import load_config
    from jsddpm.data.cache import build_volume_cache
    from jsddpm.data.phantom import write_cohort

    cfg = load_config("demo_cpu")
    write_cohort(folder / "cohort", 30, 30, 0)  # the demo's cohort: 30 controls + 30 patients, seed 0
    build_volume_cache(folder / "cohort" / "manifest.csv", folder / "cache", cfg)
    return folder / "cache"


def resized(s, size: int):
    import torch
    import torch.nn.functional as F

    from jsddpm.diagnostics.sets import ImageSet

    if s.images.shape[-1] == size:
        return s
    img = F.interpolate(torch.from_numpy(s.images), size=(size, size), mode="bilinear", align_corners=False)
    msk = F.interpolate(torch.from_numpy(s.masks[:, None].astype(np.float32)), size=(size, size), mode="nearest")
    return ImageSet(img.numpy(), msk[:, 0].numpy() > 0.5, s.subject, s.zbin, s.label, dict(s.source))


def _ci(d: dict) -> str:
    ci = f"  {d['ci_low']:.3f}-{d['ci_high']:.3f}" if d["ci_low"] is not None else ""
    return f"{d['value']:6.3f}{ci}"


def run(tr, sy, te, cfg, label: str) -> dict:
    from jsddpm.diagnostics.utility import run_utility

    t0, c0 = time.perf_counter(), _cpu_seconds()
    res = run_utility(tr, sy, te, cfg)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    print(f"{'size':>5} {'arm':<34} {'slices':>7} {'steps (per seed)':<20} {'conv':<5} {'train s':>8} "
          f"{'Dice':>6}  95% CI")
    for arm, rec in res["arms"].items():
        steps = "/".join(str(s) for s in rec["steps"])
        print(f"{label:>5} {arm:<34} {rec['n_real'] + rec['n_synthetic']:>7} {steps:<20} "
              f"{'yes' if rec['converged'] else 'no':<5} {res['seconds'][arm]:>8.1f} {_ci(rec['dice'])}  seeds "
              + "/".join(f"{v:.2f}" for v in rec["dice"]["seeds"]))
    for name, rec in res["differences"].items():
        print(f"{label:>5} {name:<34} {'':>7} {'':<20} {'':<5} {'':>8} {_ci(rec['dice'])}")
    print(f"{label:>5} all arms: {wall:.1f} s wall, {cpu:.1f} CPU s ({cfg.utility_workers} worker process(es))")
    print(f"      {res['verdict']}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=None, help="a 48 px slice cache (default: build the demo cohort's)")
    ap.add_argument("--synthetic", default=None, help="generation folder or .npz (default: the cache's val split)")
    ap.add_argument("--config", default="demo_cpu", help="preset or YAML whose diagnostics section is used")
    ap.add_argument("--sizes", type=int, nargs="+", default=[48])
    ap.add_argument("--double", action="store_true", help="rerun with twice the step cap and patience")
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides, e.g. diagnostics.utility_seeds=1")
    args = ap.parse_intermixed_args()

    from jsddpm.config import load_config
    from jsddpm.diagnostics.sets import load_set

    cfg = load_config(args.config, args.overrides).diagnostics
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache) if args.cache else demo_cache(Path(tmp))
        train, test = (load_set(cache, "real", split) for split in ("train", "test"))
        synth = load_set(args.synthetic, "synthetic") if args.synthetic else load_set(cache, "real", "val")
    print(f"real train {len(train)} slices ({int(train.masks.any(axis=(1, 2)).sum())} with lesions), test "
          f"{len(test)}, synthetic {synth.source.get('path')} ({synth.source.get('split', '')}) {len(synth)}; "
          f"{cfg.utility_seeds} seeds, <= {cfg.utility_steps} steps (validation every {cfg.utility_eval_every}, "
          f"patience {cfg.utility_patience}), batch {cfg.utility_batch_size}, widths {list(cfg.utility_widths)}")
    for size in args.sizes:
        tr, sy, te = resized(train, size), resized(synth, size), resized(test, size)
        res = run(tr, sy, te, cfg, str(size))
        if args.double:
            doubled = load_config(args.config, args.overrides + [
                f"diagnostics.utility_steps={2 * cfg.utility_steps}",
                f"diagnostics.utility_patience={2 * cfg.utility_patience}"]).diagnostics
            print("doubled budget (step cap and patience):")
            res2 = run(tr, sy, te, doubled, f"{size}x2")
            for arm, rec in res["arms"].items():
                d, d2 = rec["dice"], res2["arms"][arm]["dice"]
                inside = d["ci_low"] <= d2["value"] <= d["ci_high"] if d["ci_low"] is not None else None
                print(f"      {arm:<34} Dice {d['value']:.3f} -> {d2['value']:.3f} "
                      f"({'inside' if inside else 'OUTSIDE'} the first run's CI)")


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the worker processes)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
