"""Diagnostics speed: per-family seconds for N real + N synthetic two-channel (image + mask) images.

    .venv/bin/python benchmarks/diagnostics_bench.py                 # 1000 + 1000 at 160 px, all families
    .venv/bin/python benchmarks/diagnostics_bench.py --no-classifier
    .venv/bin/python benchmarks/diagnostics_bench.py -n 200 --size 64 --classifier-only

Targets (issue 4, 2 CPU cores): the suite without the classifier under 60 s; the classifier under
5 minutes. Each family's time covers its features on both sets, the point comparison, the bootstrap
(`diagnostics.n_bootstrap`, default 200), the real-vs-real null (`n_null_repeats`, default 40),
figure data and the per-z-bin breakdown, with the default config.

The images are brain-like arrays, not real scans: an elliptical head with smooth texture on an
integer intensity grid, round lesions in the mask channel; the synthetic set is slightly blurred
and continuous (no grid), so the families have real differences to measure.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import ndimage


def brain_like(n: int, size: int, rng: np.random.Generator, synthetic: bool = False):
    yy, xx = (np.mgrid[:size, :size] + 0.5) / size - 0.5
    a = 0.36 + 0.04 * rng.random((n, 1, 1))
    b = 0.30 + 0.04 * rng.random((n, 1, 1))
    head = (xx / a) ** 2 + (yy / b) ** 2 < 1
    texture = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 1.5, 1.5)) * 4
    shading = 0.3 * np.cos(6 * xx) * np.cos(5 * yy)
    img = np.where(head, 0.1 + shading + 0.25 * texture, -1.0)
    # one lesion in 2 of 3 slices: a bright disc inside the head
    cy, cx = (rng.random((2, n, 1, 1)) - 0.5) * 0.3
    r = 0.02 + 0.04 * rng.random((n, 1, 1))
    lesion = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2) & head & (rng.random((n, 1, 1)) < 2 / 3)
    img = np.where(lesion, img + 0.5, img)
    if synthetic:
        img = ndimage.gaussian_filter(img, (0, 0.6, 0.6))
    else:
        img = np.round((np.clip(img, -1, 1) + 1) * 127.5) / 127.5 - 1  # an 8-bit scanner grid
    return np.clip(img, -1, 1).astype(np.float32)[:, None], lesion


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000, help="images per set")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--no-classifier", action="store_true")
    ap.add_argument("--classifier-only", action="store_true")
    ap.add_argument("--json", default=None, help="also write the timings to this JSON file")
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides, e.g. diagnostics.n_bootstrap=100")
    args = ap.parse_args()

    import torch

    from jsddpm.config import load_config
    from jsddpm.diagnostics.families import load_families
    from jsddpm.diagnostics.runner import run_diagnostics
    from jsddpm.diagnostics.sets import ImageSet

    cfg = load_config(None, args.overrides).diagnostics
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    n_subjects = max(args.n // 40, 4)
    zbins = np.tile(np.arange(10), args.n // 10 + 1)[: args.n]
    subjects = np.repeat(np.arange(n_subjects), args.n // n_subjects + 1)[: args.n]
    sets = {}
    for name, synthetic in (("real", False), ("synthetic", True), ("train", False)):
        images, masks = brain_like(args.n, args.size, rng, synthetic)
        sets[name] = ImageSet(images, masks, subjects if name == "real" else None, zbins)
    print(f"data: 3 x {args.n} images at {args.size} px in {time.perf_counter() - t0:.1f} s; "
          f"torch threads {torch.get_num_threads()}, n_bootstrap {cfg.n_bootstrap}, null repeats {cfg.n_null_repeats}")
    skip = ["utility"] + (["classifier"] if args.no_classifier else [])  # utility: benchmarks/utility_bench.py
    families = load_families(only=["classifier"] if args.classifier_only else [], skip=skip)
    t0 = time.perf_counter()
    res = run_diagnostics(sets["real"], sets["synthetic"], cfg, train=sets["train"], families=families,
                          strict=True)
    wall = time.perf_counter() - t0
    fams = res["families"]
    seconds = {k: v["seconds"] for k, v in fams.items()}
    cpu = {k: v.get("cpu_seconds", 0.0) for k, v in fams.items()}
    without = sum(v for k, v in seconds.items() if k != "classifier")
    without_cpu = sum(v for k, v in cpu.items() if k != "classifier")
    # CPU time: what the same work needs on an otherwise idle machine (multi-threaded parts aside)
    print(f"\n{'family':<22}{'wall s':>8}{'cpu s':>8}{'features s':>12}")
    for k in seconds:
        f = fams[k].get("features_seconds")
        print(f"{k:<22}{seconds[k]:8.1f}{cpu[k]:8.1f}{'' if f is None else f'{f:12.1f}'}")
    print(f"{'total w/o classifier':<22}{without:8.1f}{without_cpu:8.1f}   (target < 60 s)")
    if "classifier" in seconds:
        m = res["metrics"]
        print(f"{'classifier':<22}{seconds['classifier']:8.1f}{cpu['classifier']:8.1f}   (target < 300 s); AUC "
              f"{m['classifier_auc']['value']:.3f}, dithered {m['classifier_auc_dithered']['value']:.3f}")
    print(f"wall {wall:.1f} s; severity {res['severity']['severity']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "size": args.size, "seconds": seconds, "cpu_seconds": cpu,
                       "total_without_classifier": without, "total_cpu_without_classifier": without_cpu,
                       "wall": wall}, f, indent=1)


if __name__ == "__main__":
    main()
