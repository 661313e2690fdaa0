"""Sample quality per training step and per second: train each arm for the same number of steps on one
slice cache, generate the held-out spec, diagnose, and print one table.

    .venv/bin/python benchmarks/quality_bench.py --steps 1800 \\
        --arm x0:diffusion.prediction_type=sample,diffusion.t_sampling=uniform \\
        --arm edm:diffusion.prediction_type=edm,diffusion.t_sampling=lognormal \\
        --arm eps_lr:diffusion.prediction_type=epsilon,train.lr=5e-4
    .venv/bin/python benchmarks/quality_bench.py --smoke      # minutes: checks the plumbing, measures nothing

An arm is `name:key=value,key=value`; `preset=NAME` picks its preset (default demo_cpu); a value with
commas goes in brackets (`model.channel_mult=[1,2,4]`). `--common key=value ...` applies to every arm.
Without `--cache`, the demo cohort and its cache are built like `jsddpm demo` does (reused when there).
Each arm runs through the public stages (`pipeline.run_point`: train_stage -> generate_stage ->
diagnose_stage) in OUT/arms/NAME and ends with OUT/arms/NAME/result.json; a rerun skips finished arms
and resumes an interrupted one, so a crash costs one arm at most.

Columns: train s/step = training wall seconds (validation and start-up included) / steps trained;
hh = wavelet_hh_l1_ratio (target 0.5-2); slope = spectral_slope_diff (|.| <= 0.4); area = mean
connected-lesion area synthetic / real (within 1.5x); bg = background_std synthetic / real (<= 2);
les% = lesion-class samples carrying a lesion (>= 90%); nol% = no-lesion samples carrying one (0%);
AUC = classifier AUC (<= 0.95); severity. Lesions are counted on the held-out real split and the
generated masks with the diagnostics' own lesion labelling.

Low-noise probe (`--probe-strength S`, default 0.03; 0 skips it): the held-out real slices, noised to
timestep round(S (T - 1)) (SDEdit; 0.03 starts at t = 30, sigma 0.06 on the cosine schedule, then the
last 5 of DPM-Solver++'s 30 quadratic steps) and denoised by the arm's model, diagnosed like the samples. "probe hh" /
"probe bg" are their wavelet HH-1 and background-std ratios to the untouched real slices: a model exact at
low noise gives 1 and 1, so a probe far from 1 says that detail is lost (or noise left) below that noise
level, whatever happens above it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_ARMS = (  # every arm names its prediction type and noise levels: the demo preset's own are edm + lognormal
    "x0:diffusion.prediction_type=sample,diffusion.t_sampling=uniform",
    "v:diffusion.prediction_type=v,diffusion.t_sampling=uniform",
    "edm:diffusion.prediction_type=edm,diffusion.t_sampling=uniform",
    "edm_lognormal:diffusion.prediction_type=edm,diffusion.t_sampling=lognormal",
)
# every arm trains for exactly --steps (no wall-clock budget), without the periodic sample grid
FIXED_STEPS = ("train.max_minutes=null", "train.sample_every_n_epochs=0", "train.progress_bar=false")
SMOKE = (  # tiny everything: the plumbing, not a measurement
    "train.val_max_samples=16", "train.cpu_threads=1", "sample.steps=2",
    "diagnostics.n_bootstrap=5", "diagnostics.n_null_repeats=2", "diagnostics.classifier_epochs=1",
    "diagnostics.classifier_repeats=1", "diagnostics.classifier_permutations=20", "diagnostics.classifier_folds=2",
)


# ----------------------------------------------------------------------------------- arms
def split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets: "a=1,b=[1,2]" -> ["a=1", "b=[1,2]"]."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current:
        parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_arm(spec: str) -> tuple[str, str, list[str]]:
    """"name:preset=P,key=v,..." -> (name, preset, overrides)."""
    name, _, rest = spec.partition(":")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise SystemExit(f"--arm {spec}: give name:key=value,... with a plain name (letters, digits, _ -)")
    preset, overrides = "demo_cpu", []
    for item in split_top_level(rest):
        if "=" not in item:
            raise SystemExit(f"--arm {spec}: '{item}' is not key=value")
        key, _, value = item.partition("=")
        if key == "preset":
            preset = value
        else:
            overrides.append(item)
    return name, preset, overrides


# ------------------------------------------------------------------------------- metrics
def lesion_stats(masks: np.ndarray, labels: np.ndarray, lesion_class: int | None) -> dict:
    """Mean connected-lesion area (px) and the share of lesion / no-lesion-class slices with a lesion."""
    from jsddpm.diagnostics.morphology import label_lesions

    masks = masks.astype(bool)
    _, n_lesions = label_lesions(masks)
    has = masks.reshape(len(masks), -1).any(axis=1)
    out = {"mean_lesion_area": float(masks.sum() / n_lesions) if n_lesions else 0.0, "n_lesions": int(n_lesions)}
    if lesion_class is not None:
        for key, rows in (("lesion_class_with_lesion", labels == lesion_class),
                          ("no_lesion_class_with_lesion", labels != lesion_class)):
            out[key] = float(has[rows].mean()) if rows.any() else None
    return out


def metric_value(diag: dict, name: str):
    value = diag.get("metrics", {}).get(name, {}).get("value")
    return None if value is None else float(value)


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def arm_result(cfg, cache_dir: Path, arm_dir: Path) -> dict:
    """The table row of one finished arm, from its files."""
    import torch

    from jsddpm.data.cache import load_cache

    diag = json.loads((arm_dir / "diagnostics" / "diagnostics.json").read_text())
    train_seconds = json.loads((arm_dir / "train" / "finished.json").read_text())["seconds"]
    steps = int(torch.load(arm_dir / "train" / "checkpoints" / "last.ckpt", weights_only=True,
                           map_location="cpu")["global_step"])
    cache = load_cache(cache_dir)
    lesion_class = cache.classes.index("lesion") if "lesion" in cache.classes else None
    idx = cache.indices(str(cfg.diagnostics.real_split))
    real = {}
    if cache.masks is not None:
        real = lesion_stats(np.asarray(cache.masks[idx])[:, 0], cache.index["label"][idx], lesion_class)
    with np.load(arm_dir / "generated" / "samples.npz") as f:
        images, labels = f["images"], f["label"]
    synth = lesion_stats(images[:, -1] > 0, labels, lesion_class) if cfg.model.joint_mask else {}
    return {
        "steps": steps,
        "train_s_per_step": train_seconds / max(steps, 1),
        "wavelet_hh_l1_ratio": metric_value(diag, "wavelet_hh_l1_ratio"),
        "spectral_slope_diff": metric_value(diag, "spectral_slope_diff"),
        "lesion_area_ratio": ratio(synth.get("mean_lesion_area"), real.get("mean_lesion_area")),
        "background_std_ratio": ratio(metric_value(diag, "background_std_synth"),
                                      metric_value(diag, "background_std_real")),
        "lesion_class_with_lesion": synth.get("lesion_class_with_lesion"),
        "no_lesion_class_with_lesion": synth.get("no_lesion_class_with_lesion"),
        "classifier_auc": diag.get("headline", {}).get("classifier_auc"),
        "severity": diag.get("headline", {}).get("severity"),
        "real_lesions": real, "synthetic_lesions": synth,
    }


COLUMNS = (  # (header, key, format)
    ("steps", "steps", "{:d}"), ("train s/step", "train_s_per_step", "{:.3f}"),
    ("hh", "wavelet_hh_l1_ratio", "{:.2f}"), ("slope", "spectral_slope_diff", "{:.2f}"),
    ("area", "lesion_area_ratio", "{:.2f}"), ("bg", "background_std_ratio", "{:.2f}"),
    ("les%", "lesion_class_with_lesion", "{:.0%}"), ("nol%", "no_lesion_class_with_lesion", "{:.0%}"),
    ("AUC", "classifier_auc", "{:.3f}"), ("severity", "severity", "{:.3f}"),
    ("probe hh", "probe_hh", "{:.2f}"), ("probe bg", "probe_bg", "{:.2f}"),
)


def low_noise_probe(cfg, ckpt: Path, cache_dir: Path, arm_dir: Path, strength: float) -> dict:
    """HH-1 and background-std ratios of the held-out real slices after SDEdit at `strength` (see above)."""
    from omegaconf import OmegaConf

    from jsddpm.config import section_overrides
    from jsddpm.diagnostics.stage import run_all
    from jsddpm.generation import generate
    from jsddpm.pipeline import held_out_spec

    split = str(cfg.diagnostics.real_split)
    out, diag_dir = arm_dir / f"probe_{strength:g}", arm_dir / f"probe_{strength:g}_diagnostics"
    if not (out / "samples.npz").is_file():
        sample = section_overrides(cfg, "sample", skip=("strength",))
        generate(ckpt, out, spec=held_out_spec(cache_dir, split), overrides=[*sample, f"sample.strength={strength}"],
                 overwrite=True, source=cache_dir, split=split)
    if not (diag_dir / "diagnostics.json").is_file():
        probe_cfg = OmegaConf.merge(cfg, {"diagnostics": {"only": ["wavelet", "background"], "skip": []}})
        run_all(cache_dir, out, diag_dir, probe_cfg, progress=lambda _: None)
    diag = json.loads((diag_dir / "diagnostics.json").read_text())
    return {"probe_strength": strength, "probe_hh": metric_value(diag, "wavelet_hh_l1_ratio"),
            "probe_bg": ratio(metric_value(diag, "background_std_synth"), metric_value(diag, "background_std_real"))}


def table(rows: dict[str, dict]) -> str:
    lines = ["| arm | " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in rows.items():
        cells = ["-" if row.get(k) is None else fmt.format(row[k]) for _, k, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", action="append", default=None, metavar="NAME:key=v,...",
                    help="an arm (repeat); default: " + " ".join(DEFAULT_ARMS))
    ap.add_argument("--steps", type=int, default=1800, help="training steps of every arm (default 1800)")
    ap.add_argument("--out", default="bench_out/quality", help="output folder; rerun to resume")
    ap.add_argument("--cache", default=None, help="slice cache to train and diagnose on (default: the demo's)")
    ap.add_argument("--subjects", type=int, default=None, help="demo cohort size (default: jsddpm demo's)")
    ap.add_argument("--patients", type=int, default=None, help="demo cohort patients (default: jsddpm demo's)")
    ap.add_argument("--seed", type=int, default=None, help="demo cohort seed (default: jsddpm demo's)")
    ap.add_argument("--common", nargs="*", default=[], metavar="key=value", help="overrides for every arm")
    ap.add_argument("--smoke", action="store_true", help="3 steps, 2 sampler steps, light diagnostics")
    ap.add_argument("--probe-strength", type=float, default=0.03,
                    help="low-noise probe: SDEdit strength of the held-out real slices (0 skips it)")
    args = ap.parse_args(argv)

    from jsddpm.commands import DEMO_PATIENTS, DEMO_SEED, DEMO_SUBJECTS
    from jsddpm.config import load_config
    from jsddpm.io import atomic_write_text
    from jsddpm.pipeline import ensure_cache, ensure_cohort, run_point, timed_logger, trained_checkpoint

    out = Path(args.out)
    steps = 3 if args.smoke else args.steps
    arms = [parse_arm(a) for a in (args.arm or DEFAULT_ARMS)]
    if len({name for name, _, _ in arms}) != len(arms):
        raise SystemExit("--arm: two arms share a name")
    common = [*FIXED_STEPS, f"train.max_steps={steps}", *(SMOKE if args.smoke else ()), *args.common]
    log = timed_logger()
    if args.cache:
        cache_dir = Path(args.cache)
    else:
        first = load_config(arms[0][1], [*arms[0][2], *common])
        manifest = ensure_cohort(out / "cohort", args.subjects or DEMO_SUBJECTS, args.patients or DEMO_PATIENTS,
                                 DEMO_SEED if args.seed is None else args.seed, log)
        cache_dir = ensure_cache(manifest, out / "cache", first, log)

    rows = {}
    for name, preset, overrides in arms:
        arm_dir = out / "arms" / name
        result_path = arm_dir / "result.json"
        cfg = load_config(preset, [*common, *overrides])
        if result_path.is_file():
            log(f"{name}: finished earlier, reusing {result_path}")
            row = json.loads(result_path.read_text())
        else:
            log(f"{name}: {preset} {' '.join(overrides)}")
            t0 = time.perf_counter()
            run_point(cfg, cache_dir, arm_dir, log)
            row = {"preset": preset, "overrides": overrides, "common": common,
                   **arm_result(cfg, cache_dir, arm_dir), "arm_seconds": time.perf_counter() - t0}
        if args.probe_strength > 0 and row.get("probe_strength") != args.probe_strength:
            ckpt = trained_checkpoint(arm_dir / "train")
            row.update(low_noise_probe(cfg, ckpt, cache_dir, arm_dir, args.probe_strength))
        atomic_write_text(result_path, json.dumps(row, indent=1) + "\n")
        rows[name] = row
    text = table(rows)
    atomic_write_text(out / "table.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
