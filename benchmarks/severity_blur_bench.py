"""Severity's scale: real slices against other real slices blurred by a Gaussian of growing width.

    PYTHONPATH=src .venv/bin/python benchmarks/severity_blur_bench.py --cache demo_out/cache
    PYTHONPATH=src .venv/bin/python benchmarks/severity_blur_bench.py            # builds the demo cohort

The real side is `-n` slices of half the cache's subjects (resampled in whole subjects), the "synthetic"
side `-n` slices of the other half (also in whole subjects), their image channel blurred in-plane by a
Gaussian of sigma 0 (real vs real), 0.45, 0.8, 1.2, 2 px; masks untouched. Every family that feeds a
severity component runs (spectral ... morphology; no classifier, memorisation, feature distances or
utility). `--draws` repeats the whole table over other subject halves and slice draws. Prints the
severity per blur and each group's score (or, for outputs without groups, the mean component score).
The README's reading guide quotes this table ("severity 0.2 ~ a blur of ... px").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

FAMILIES = ["spectral", "wavelet", "texture", "boundary", "background", "spatial", "pixel", "intensity",
            "morphology"]


def demo_cache(folder: Path) -> Path:
    from jsddpm.commands import DEMO_PATIENTS, DEMO_SEED, DEMO_SUBJECTS
    from jsddpm.config import load_config
    from jsddpm.pipeline import ensure_cache, ensure_cohort

    cfg = load_config("demo_cpu", [])
    manifest = ensure_cohort(folder / "cohort", DEMO_SUBJECTS, DEMO_PATIENTS, DEMO_SEED)
    return ensure_cache(manifest, folder / "cache", cfg)


def halves(cache, n: int, rng: np.random.Generator):
    """(real, other) ImageSets: n slices each from two disjoint random halves of the subjects."""
    from jsddpm.diagnostics.sets import ImageSet

    subject = np.asarray(cache.index["subject_id"])
    ids = rng.permutation(np.unique(subject))
    first = np.isin(subject, ids[: len(ids) // 2])
    out = []
    for side in (first, ~first):
        idx = np.sort(rng.choice(np.flatnonzero(side), size=min(n, int(side.sum())), replace=False))
        images = np.asarray(cache.images[idx], dtype=np.float32)
        masks = np.asarray(cache.masks[idx])[:, 0] > 0
        out.append(ImageSet(images, masks, subject[idx], label=np.asarray(cache.index["label"])[idx]))
    return out


def blurred(s, sigma: float):
    from jsddpm.diagnostics.sets import ImageSet

    images = s.images if sigma == 0 else ndimage.gaussian_filter(s.images, (0, 0, sigma, sigma), mode="nearest")
    # the other side keeps its subject ids: it is real data, clustered by subject, so the null draws it
    # in whole subjects too (as independent slices, the real-vs-real null is too narrow for it)
    return ImageSet(images.astype(np.float32), s.masks, s.subject, label=s.label)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=None, help="slice cache folder (default: build the demo cohort's)")
    ap.add_argument("-n", type=int, default=200, help="slices per side")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.45, 0.8, 1.2, 2.0])
    ap.add_argument("--draws", type=int, default=1, help="repeat over this many subject halves / slice draws")
    ap.add_argument("--components", action="store_true", help="also print every component's z and score")
    ap.add_argument("--json", default=None, help="also write every run's metrics and severity to this file")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (diagnostics.*)")
    args = ap.parse_args()

    from jsddpm.config import load_config
    from jsddpm.data.cache import load_cache
    from jsddpm.diagnostics.common import jsonable
    from jsddpm.diagnostics.families import load_families
    from jsddpm.diagnostics.runner import run_diagnostics

    with tempfile.TemporaryDirectory() as tmp:
        cache = load_cache(args.cache or demo_cache(Path(tmp)))
        cfg = load_config(None, ["diagnostics.n_bootstrap=2", *args.overrides]).diagnostics
        families = load_families(only=FAMILIES)
        rows, dump = [], []
        for draw in range(args.draws):
            real, other = halves(cache, args.n, np.random.default_rng(draw))
            for sigma in args.sigmas:
                t0 = time.perf_counter()
                res = run_diagnostics(real, blurred(other, sigma), cfg, families=families, progress=None,
                                      strict=True)
                sev, groups = res["severity"], res["severity"].get("groups") or {}
                rows.append((draw, sigma, sev["severity"], groups, sev["components"], time.perf_counter() - t0))
                dump.append({"draw": draw, "sigma": sigma, "metrics": jsonable(res["metrics"]),
                             "severity": jsonable(sev)})
    if args.json:
        Path(args.json).write_text(json.dumps(dump))
    group_names = list(dict.fromkeys(g for r in rows for g in r[3]))
    print(f"# severity definition {sev.get('version')}, {args.n} vs {args.n} slices, "
          f"{cfg.n_null_repeats} null draws")
    print("| draw | blur sigma (px) | severity | " + " | ".join(group_names or ["mean component score"])
          + " | s |")
    print("| --- " * (4 + max(len(group_names), 1)) + "|")
    for draw, sigma, s, groups, comps, seconds in rows:
        cells = ([f"{groups[g]['score']:.3f}" if g in groups else "-" for g in group_names] if group_names else
                 [f"{np.mean([c['score'] for c in comps.values()]):.3f}"])
        print(f"| {draw} | {sigma:g} | **{s:.3f}** | " + " | ".join(cells) + f" | {seconds:.1f} |")
    if args.components:
        names = list(rows[0][4])
        print("\n| draw | blur | " + " | ".join(names) + " |")
        print("| --- " * (2 + len(names)) + "|")
        for draw, sigma, _, _, comps, _ in rows:
            print(f"| {draw} | {sigma:g} | " + " | ".join(
                f"{comps[c]['score']:.2f} (z {comps[c]['z']:.1f})" if c in comps and comps[c]['z'] is not None
                else "-" for c in names) + " |")


if __name__ == "__main__":
    main()
