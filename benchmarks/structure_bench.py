"""Anatomy known answers: the structure family's metrics (value, z against the real-vs-real null) and the
classifier's AUC with its subject-clustered CI, for the real test split of a slice cache against

- real vs real: as many slices drawn from the cache's training split (other subjects, kept whole);
- tiles: the same slices with `--tile` px tiles shuffled within the brain (structure.permute_tiles:
  anatomy destroyed, histogram, local texture and outline kept);
- blurred: the same slices, Gaussian blur sigma `--blur` px on the image channel;
- mirrored: the same slices flipped left-right (anatomy intact);
- synthetic (with `--synthetic DIR`): a generation folder, e.g. the demo's `generated/`.

    PYTHONPATH=src .venv/bin/python benchmarks/structure_bench.py --cache demo_out/cache --synthetic demo_out/generated
    PYTHONPATH=src .venv/bin/python benchmarks/structure_bench.py            # builds the demo cohort's cache first

The comparison sets carry their subject ids, so the classifier's folds and CI keep subjects whole on both
sides (a generator's samples would be resampled one by one). The classifier runs with the config's
diagnostics settings (`key=value` overrides), dithering included when the real set sits on a grid.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

COMPONENTS = ("asymmetry_ratio", "outline_roughness_ratio", "midscale_band_ratio", "outline_solidity_ratio")


def demo_cache(folder: Path) -> Path:
    from jsddpm.commands import DEMO_PATIENTS, DEMO_SEED, DEMO_SUBJECTS
    from jsddpm.config import load_config
    from jsddpm.data.cache import build_volume_cache
    from jsddpm.data.phantom import write_cohort

    write_cohort(folder / "cohort", n_controls=DEMO_SUBJECTS - DEMO_PATIENTS, n_patients=DEMO_PATIENTS, seed=DEMO_SEED)
    build_volume_cache(folder / "cohort" / "manifest.csv", folder / "cache", load_config("demo_cpu", []))
    return folder / "cache"


def comparison_sets(cache: Path, synthetic: str | None, tile: int, blur: float, cfg):
    from jsddpm.diagnostics import structure
    from jsddpm.diagnostics.regions import tissues
    from jsddpm.diagnostics.sets import ImageSet, load_set

    real = load_set(cache, "real", "test")
    train = load_set(cache, "train", "train")
    rng = np.random.default_rng(0)
    other = train.take(np.sort(rng.choice(len(train), min(len(real), len(train)), replace=False)))
    t = tissues(other.images, other.masks, cfg)

    def like(images, masks=None):
        return ImageSet(np.ascontiguousarray(images, dtype=np.float32), other.masks if masks is None else masks,
                        other.subject, other.zbin, other.label)

    sets = {"real vs real": other,
            f"tiles {tile} px": like(structure.permute_tiles(t["gray"], t["roi"], tile, rng)[:, None]),
            f"blurred {blur:g} px": like(ndimage.gaussian_filter(other.images, (0, 0, blur, blur))),
            "mirrored": like(other.images[..., ::-1], np.ascontiguousarray(other.masks[..., ::-1]))}
    if synthetic:
        sets["synthetic"] = load_set(synthetic, "synthetic")
    return real, sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=None, help="slice cache with test and train splits (default: build the demo's)")
    ap.add_argument("--synthetic", default=None, help="a generation folder to add as a row")
    ap.add_argument("--tile", type=int, default=4)
    ap.add_argument("--blur", type=float, default=1.0)
    ap.add_argument("--no-classifier", action="store_true")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. diagnostics.seed=1")
    args = ap.parse_args()

    import torch

    from jsddpm.config import load_config
    from jsddpm.diagnostics import runner, structure
    from jsddpm.diagnostics.families import run_classifier
    from jsddpm.diagnostics.sets import Sets
    from jsddpm.diagnostics.severity import metric_z

    torch.set_num_threads(1)
    cfg = load_config(None, args.overrides).diagnostics
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache) if args.cache else demo_cache(Path(tmp))
        real, sets = comparison_sets(cache, args.synthetic, args.tile, args.blur, cfg)
    other = sets["real vs real"]
    print(f"real: {len(real)} test slices of {len(np.unique(real.subject))} subjects; comparison sets: {len(other)} "
          f"slices of {len(np.unique(other.subject))} other subjects")
    head = f"{'set':<16}" + "".join(f"{c:>26}" for c in COMPONENTS)
    if not args.no_classifier:
        head += f"{'classifier AUC (95% CI)':>30}{'s':>6}"
    print(head)
    for name, s in sets.items():
        res = runner.run_family(structure, real, s, cfg)["metrics"]
        row = f"{name:<16}"
        for c in COMPONENTS:
            z = metric_z(c, res[c])
            row += f"{res[c]['value']:>15.3f} (z {z:5.1f})"
        if not args.no_classifier:
            t0 = time.process_time()
            auc = run_classifier(Sets(real, s), cfg).metrics["classifier_auc"]
            row += f"{auc['value']:>12.3f} ({auc['ci_low']:.2f}-{auc['ci_high']:.2f}){time.process_time() - t0:>6.0f}"
        print(row, flush=True)
    print("z: distance from the real-vs-real null in null SDs with severity's sidedness (asymmetry and roughness "
          "one-sided); s: classifier CPU seconds (plain + dithered run)")


if __name__ == "__main__":
    main()
