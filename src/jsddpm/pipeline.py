"""The stages chained: demo cohort -> cache -> train -> generate -> diagnose, each stage skipped when
its finished output is already there, so `jsddpm demo` and `jsddpm study` resume after a crash.

A stage is finished when its output folder exists (every stage writes through `io.atomic_dir`, so a
folder that exists is complete), except training, which writes into its folder as it goes and is
finished when `train/finished.json` exists (written after `fit` returns).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write_text

Log = Callable[[str], None]


def timed_logger() -> Log:
    """A log that prefixes the seconds since it was made and flushes (progress shows in a pipe too)."""
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    return log


def ensure_cohort(folder: Path, subjects: int, patients: int, seed: int, log: Log = print) -> Path:
    """The demo cohort (NIfTI + manifest.csv); reused when already there."""
    from .data.phantom import write_cohort
    from .io import atomic_dir, write_run_record

    manifest = folder / "manifest.csv"
    if manifest.is_file():
        log(f"cohort: reusing {manifest}")
        return manifest
    t0 = time.perf_counter()
    with atomic_dir(folder) as tmp:
        write_cohort(tmp, subjects - patients, patients, seed)
        write_run_record(tmp)
    log(f"cohort: {subjects - patients} controls + {patients} patients from the MNI152 template "
        f"in {time.perf_counter() - t0:.0f} s -> {folder}")
    return manifest


def ensure_cache(manifest: Path, folder: Path, cfg: Any, log: Log = print) -> Path:
    from .data.cache import build_volume_cache

    if (folder / "index.csv").is_file():
        log(f"cache: reusing {folder}")
        return folder
    t0 = time.perf_counter()
    stats = build_volume_cache(manifest, folder, cfg)
    log(f"cache: {stats['n_slices']} slices at {cfg.data.image_size} px "
        f"in {time.perf_counter() - t0:.0f} s -> {folder}")
    return folder


def held_out_spec(cache_dir: Path, split: str) -> dict:
    """Generation spec matching the held-out real slices: one sample per real slice of each
    (z-bin, class), so real and synthetic sets are compared like for like."""
    from .data.cache import load_cache

    cache = load_cache(cache_dir)
    idx = cache.indices(split)
    pairs = np.stack([cache.index["zbin"][idx], cache.index["label"][idx]], axis=1).astype(np.int64)
    keys, counts = np.unique(pairs, axis=0, return_counts=True)
    return {"conditions": [{"zbin": int(z), "label": int(c), "count": int(n)} for (z, c), n in zip(keys, counts)]}


def train_stage(cfg: Any, train_dir: Path, log: Log = print) -> Path:
    """Train (resuming from last.ckpt when a previous attempt was cut short); returns the checkpoint to
    sample from: best.ckpt (lowest EMA validation loss) when there is one, else last.ckpt."""
    from omegaconf import OmegaConf

    from .training.trainer import CHECKPOINT_DIR, train

    ckpts = train_dir / CHECKPOINT_DIR
    finished = train_dir / "finished.json"
    if finished.is_file():
        log(f"train: finished earlier, reusing {ckpts}")
    else:
        cfg = OmegaConf.merge(cfg, {"train": {"out_dir": str(train_dir), "resume": "auto"}})
        t0 = time.perf_counter()
        train(cfg)
        atomic_write_text(finished, json.dumps({"seconds": time.perf_counter() - t0}) + "\n")
    return trained_checkpoint(train_dir)


def trained_checkpoint(train_dir: Path) -> Path:
    """The checkpoint to sample from: best.ckpt when there is one, else last.ckpt."""
    from .training.trainer import CHECKPOINT_DIR

    ckpts = train_dir / CHECKPOINT_DIR
    for name in ("best.ckpt", "last.ckpt"):
        if (ckpts / name).is_file():
            return ckpts / name
    raise FileNotFoundError(f"{ckpts}: training wrote no checkpoint")


def generate_stage(ckpt: Path, out: Path, spec: dict, cfg: Any = None, log: Log = print) -> Path:
    """Samples of `ckpt` matching `spec`; its model and diffusion settings are the checkpoint's, the sample
    section `cfg`'s (None: the checkpoint's too)."""
    from .generation import generate

    if (out / "samples.npz").is_file():
        log(f"generate: reusing {out}")
        return out
    t0 = time.perf_counter()
    generate(ckpt, out, spec=spec, config=cfg)
    seconds, n = time.perf_counter() - t0, sum(c["count"] for c in spec["conditions"])
    log(f"generate: {n} samples in {seconds:.0f} s ({n / seconds:.1f}/s)")
    return out


def inpaint_stage(ckpt: Path, cache_dir: Path, out: Path, n: int = 8, log: Log = print) -> Path:
    """Lesions inpainted into real lesion-free train slices (bank masks; the checkpoint's inpaint.*
    settings): the demo's training pairs."""
    from .generation.inpaint import inpaint

    if (out / "samples.npz").is_file():
        log(f"inpaint: reusing {out}")
        return out
    t0 = time.perf_counter()
    inpaint(ckpt, cache_dir, out, n=n)
    log(f"inpaint: {n} pairs requested in {time.perf_counter() - t0:.0f} s (a fidelity filter may keep fewer)")
    return out


def pairs_report(diag_dir: Path, pairs_dir: Path, pairs_diag_dir: Path, log: Log = print) -> Path:
    """The generated set's report with a section on the training pairs: their grid, pairing numbers and
    the utility test, all of which describe the pairs (not the generated set). Stored in the diagnostics
    folder (so `jsddpm diagnose report` keeps it) and re-rendered; returns its report.html."""
    import html

    from .diagnostics.report_html import Section, img, table, utility_section_body
    from .diagnostics.stage import add_report_section

    pairs_diag = json.loads((pairs_diag_dir / "diagnostics.json").read_text())
    util = pairs_diag.get("utility") or {}
    metrics = pairs_diag.get("metrics", {})
    grid = (pairs_dir / "grid_inpaint.png").read_bytes()
    shown = [pairs_diag_dir / "figures" / f"{k}.png" for k in ("utility_bars", "utility_examples")]
    util_figures = {f.stem: f.read_bytes() for f in shown if f.is_file()}
    meanings = {"pairing_dice_ratio": "the reference segmenter's Dice against the pairs' masks / against real masks",
                "lesion_contrast_ratio": "lesion contrast against its 2-4 px ring, pairs / real"}
    rows = []
    for name, meaning in meanings.items():
        m = metrics.get(name)
        if m and m.get("value") is not None:
            ci = "" if m.get("ci_low") is None else f" ({m['ci_low']:.2f} – {m['ci_high']:.2f})"
            rows.append((name, f"{m['value']:.3f}{ci}", meaning))
    with np.load(pairs_dir / "samples.npz") as s:  # the filter's record (only these small fields are read)
        threshold = float(s["min_fidelity"]) if "min_fidelity" in s.files else float("nan")
        kept = (f" Each pair was kept only where the reference segmenter (trained on the real training slices) "
                f"finds its inpainted lesion: Dice &ge; {threshold:g} (<code>inpaint.min_fidelity</code>; "
                f"{int(s['fidelity_requested'])} pairs requested, keep rate {float(s['fidelity_keep_rate']):.2f} "
                "of the draws), so their pairing Dice ratio is high by selection; the utility test, with "
                "segmenters trained afresh and scored on held-out real subjects, is the independent judge."
                if np.isfinite(threshold) else "")
    body = (f"<p>The demo's training pairs: {pairs_diag['synthetic_set']['n']} real lesion-free training slices, each "
            "with a real lesion mask of another training subject inpainted (<code>jsddpm inpaint --masks bank</code>): "
            "source | result | mask | |difference|. Outside the dilated mask the result is the source, exactly."
            f"{kept} The numbers in this section describe these pairs; the sections above describe the fully "
            "generated set.</p>"
            + img(grid, "training pairs") + table(("metric", "value (95% CI)", "1 = like real pairs"), rows)
            + utility_section_body(util, util_figures)
            + f"<p class='note'>All diagnostics of the pairs: {html.escape(str(pairs_diag_dir / 'report.html'))}</p>")
    figures = {"pairs_grid": grid, **{f"pairs_{k}": v for k, v in util_figures.items()}}
    report = add_report_section(diag_dir, "pairs", Section("Training pairs: lesions inpainted into real slices",
                                                           body, figures))
    log(f"report: the training pairs' section added to {report}")
    return report


def diagnose_stage(cfg: Any, real: Path, synthetic: Path, out: Path, log: Log = print) -> Path:
    from .diagnostics.stage import run_all

    if (out / "diagnostics.json").is_file():
        log(f"diagnose: reusing {out}")
        return out
    return run_all(real, synthetic, out, cfg, progress=log)


def run_point(cfg: Any, cache_dir: Path, point_dir: Path, log: Log = print) -> Path:
    """train -> generate (matching the held-out split) -> diagnose for one config; resumable."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(cfg, {"data": {"cache_dir": str(cache_dir)}})
    ckpt = train_stage(cfg, point_dir / "train", log)
    spec = held_out_spec(cache_dir, str(cfg.diagnostics.real_split))
    # the generation stage reads model/diffusion from the checkpoint; the sample section from here
    gen = generate_stage(ckpt, point_dir / "generated", spec, cfg, log)
    return diagnose_stage(cfg, cache_dir, gen, point_dir / "diagnostics", log)
