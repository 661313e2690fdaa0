"""Utility speed and quality: seconds per arm (all seeds) of `jsddpm diagnose utility` at the demo's size
and at 160 px.

    .venv/bin/python benchmarks/utility_bench.py                       # demo cohort, 48 px and 160 px
    .venv/bin/python benchmarks/utility_bench.py --cache demo_out/cache --sizes 48
    .venv/bin/python benchmarks/utility_bench.py diagnostics.utility_steps=300

Target (issue 11, 2 CPU cores): the three arms (real, synthetic, real_plus_synthetic) with the default
3 seeds under 60 s at the demo's size (48 px, ~1,800 real training slices). The real set is the demo
cohort's cache (built here in a temporary folder unless --cache is given): train split for training,
test split for scoring; the synthetic set is the cache's val split, i.e. a real-data reference arm.
At other sizes the 48 px slices are resized (bilinear images, nearest masks): timing only, the Dice
there says nothing about quality. "train s" is the seconds spent training and predicting, summed over
the arm's seeds (they run in `diagnostics.utility_workers` processes at once); CPU seconds are the
steadier number on a shared machine.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=None, help="a 48 px slice cache (default: build the demo cohort's)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[48, 160])
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides, e.g. diagnostics.utility_seeds=1")
    args = ap.parse_intermixed_args()

    from jsddpm.config import load_config
    from jsddpm.diagnostics.sets import load_set
    from jsddpm.diagnostics.utility import run_utility

    cfg = load_config(None, args.overrides).diagnostics
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache) if args.cache else demo_cache(Path(tmp))
        train, test, synth = (load_set(cache, "real", split) for split in ("train", "test", "val"))
    print(f"real train {len(train)} slices ({int(train.masks.any(axis=(1, 2)).sum())} with lesions), "
          f"test {len(test)}, synthetic (val split) {len(synth)}; {cfg.utility_seeds} seeds x "
          f"{cfg.utility_steps} steps, batch {cfg.utility_batch_size}, widths {list(cfg.utility_widths)}")
    print(f"{'size':>5} {'arm':<22} {'slices':>7} {'train s':>8} {'Dice':>6}  95% CI")
    for size in args.sizes:
        tr, sy, te = resized(train, size), resized(synth, size), resized(test, size)
        t0, c0 = time.perf_counter(), _cpu_seconds()
        res = run_utility(tr, sy, te, cfg)
        for arm, rec in res["arms"].items():
            d = rec["dice"]
            print(f"{size:>5} {arm:<22} {rec['n_real'] + rec['n_synthetic']:>7} {res['seconds'][arm]:>8.1f} "
                  f"{d['value']:>6.3f}  {d['ci_low']:.3f}-{d['ci_high']:.3f}")
        print(f"{size:>5} all arms: {time.perf_counter() - t0:.1f} s wall, {_cpu_seconds() - c0:.1f} CPU s "
              f"({cfg.utility_workers} worker process(es))")
        print(f"      {res['verdict']}")


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the worker processes)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
