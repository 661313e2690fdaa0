"""The diagnose stage: load real and synthetic sets from disk, run the diagnostics, write the outputs.

All file I/O of the diagnostics lives here; `jsddpm.diagnostics` stays pure arrays -> dicts.

Inputs (each of real / synthetic / train):
- a slice cache folder (`images.npy` + `index.csv`; masks from `masks.npy`), one split of it;
- a generation folder holding `samples.npz` (its `config.yaml` says how many image channels);
- an `.npz` with `images` (N, C, H, W) in [-1, 1] and optional `zbin`, `label`, `subject`, `has_mask`.
  Without `has_mask` or `--image-channels`, C == 2 or C == 4 means the last channel is the mask.

Outputs of `run_all` (one folder, written atomically): `diagnostics.json`, `summary.csv`,
`figure_data.json` + `sample_grid.npz` (what `report` re-renders from), `figures/*.png`,
`report.html`, `config.yaml` + `versions.json`, and `generator_config.yaml` (a copy of the synthetic
source's config when it has one: `aggregate` reads experiment factors from it).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np

from .errors import UserError
from .io import atomic_dir, atomic_write_bytes, atomic_write_text, require_free_output, versions, write_run_record

N_GRID = 8  # samples per set shown in the report's grid


# ------------------------------------------------------------------------------------ loading
def _cache_set(path: Path, split: str, role: str):
    from .data.cache import load_cache
    from .diagnostics.runner import ImageSet

    cache = load_cache(path)
    idx = cache.indices(split)
    if len(idx) == 0:
        present = sorted(set(cache.index["split"].tolist())) if "split" in cache.index else []
        fix = "give the training set with --train" if role == "train" else f"choose another with --{role}-split"
        raise UserError(f"{path}: no slices in split '{split}' (splits present: {', '.join(present)}); {fix}")
    images = np.asarray(cache.images[idx], dtype=np.float32)
    masks = None if cache.masks is None else np.asarray(cache.masks[idx])[:, 0].astype(bool)
    def col(name):
        return cache.index[name][idx] if name in cache.index else None
    subjects = col("subject_id")
    source = {"path": str(path), "kind": "cache", "split": split, "n": len(idx),
              "n_subjects": None if subjects is None else len(np.unique(subjects))}
    return ImageSet(images, masks, subjects, col("zbin"), col("label"), source)


def _split_channels(images: np.ndarray, path: Path, image_channels: int | None, has_mask) -> tuple:
    c = images.shape[1]
    if image_channels is not None:
        if c not in (image_channels, image_channels + 1):
            raise UserError(f"{path}: images have {c} channels, which fits neither {image_channels} image "
                            "channels nor image + mask; fix --image-channels")
        n_img = image_channels
    elif has_mask is not None:
        n_img = c - 1 if bool(has_mask) else c
    else:
        n_img = c - 1 if c in (2, 4) else c
    if n_img not in (1, 3):
        raise UserError(f"{path}: {n_img} image channels; expected 1 or 3 (give --image-channels)")
    masks = images[:, n_img] > 0 if c > n_img else None
    return np.ascontiguousarray(images[:, :n_img]), masks


def _npz_set(path: Path, role: str, image_channels: int | None, kind: str = "npz"):
    from .diagnostics.runner import ImageSet
    from .io import reading

    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"{path}: cannot read as .npz ({exc}); give an .npz written by numpy.savez") from None
    with data, reading(path, ".npz set", "save plain numeric arrays (no Python objects) with numpy.savez"):
        if "images" not in data.files:
            raise UserError(f"{path}: no 'images' array (found {', '.join(data.files) or 'nothing'}); "
                            "save the set as images=(N, C, H, W) in [-1, 1]")
        images = np.asarray(data["images"], dtype=np.float32)
        meta = {k: np.asarray(data[k]) for k in ("zbin", "label", "subject") if k in data.files}
        has_mask = data["has_mask"].item() if "has_mask" in data.files else None
    if images.ndim != 4:
        raise UserError(f"{path}: 'images' has shape {images.shape}; expected (N, C, H, W)")
    if len(images) == 0:
        raise UserError(f"{path}: 'images' holds 0 images; give a set with at least one image")
    if not np.isfinite(images).all():
        raise UserError(f"{path}: 'images' contains NaN or inf; regenerate or clean the set")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.001 or hi > 1.001:
        raise UserError(f"{path}: intensities span [{lo:.3g}, {hi:.3g}]; rescale the images to [-1, 1]")
    imgs, masks = _split_channels(images, path, image_channels, has_mask)
    source = {"path": str(path), "kind": kind, "n": len(imgs)}
    if "subject" in meta:
        source["n_subjects"] = len(np.unique(meta["subject"]))
    return ImageSet(imgs, masks, meta.get("subject"), meta.get("zbin"), meta.get("label"), source)


def _generation_channels(folder: Path) -> int | None:
    cfg_path = folder / "config.yaml"
    if not cfg_path.is_file():
        return None
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(cfg_path)
    return int(OmegaConf.select(cfg, "model.image_channels", default=1) or 1)


def load_set(path, role: str = "real", split: str = "test", image_channels: int | None = None):
    """An `ImageSet` from a cache folder (its `split`), a generation folder or an .npz file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found; give a slice cache folder, a generation folder or an .npz file")
    if path.is_dir():
        if (path / "images.npy").is_file():
            return _cache_set(path, split, role)
        if (path / "samples.npz").is_file():
            channels = image_channels or _generation_channels(path)
            s = _npz_set(path / "samples.npz", role, channels, kind="generation")
            s.source["path"] = str(path)
            return s
        raise UserError(f"{path}: neither a slice cache (images.npy) nor a generation folder (samples.npz); "
                        f"give one of those or an .npz file for --{role}")
    if path.suffix != ".npz":
        raise UserError(f"{path}: unsupported file type; give a slice cache folder, a generation folder "
                        "or an .npz with 'images'")
    return _npz_set(path, role, image_channels)


def generator_config_source(synthetic_path) -> Path | None:
    """The config.yaml that describes how the synthetic set was made, when there is one."""
    p = Path(synthetic_path)
    folder = p if p.is_dir() else (p.parent if p.name == "samples.npz" else None)
    if folder is not None and (folder / "config.yaml").is_file():
        return folder / "config.yaml"
    return None


# ------------------------------------------------------------------------------------ writing
def _sample_grid(s, n: int = N_GRID) -> dict[str, np.ndarray]:
    idx = np.linspace(0, len(s) - 1, min(n, len(s))).round().astype(int)
    if s.masks is not None and s.masks.any():  # prefer slices with lesions, so masks are visible
        lesion = np.flatnonzero(s.masks.any(axis=(1, 2)))
        idx = lesion[np.linspace(0, len(lesion) - 1, min(n, len(lesion))).round().astype(int)]
    out = {"images": np.asarray(s.images[idx], dtype=np.float32)}
    if s.masks is not None:
        out["masks"] = s.masks[idx]
    return out


def summary_rows(metrics: dict) -> list[dict]:
    from .diagnostics import severity as sev

    rows = []
    for name, rec in metrics.items():
        z = sev.metric_z(name, rec)  # absolute SD floors; inf (written as "inf") when absent in synthetic
        rows.append({"metric": name, "family": rec.get("family"),
                     **{k: rec.get(k) for k in ("value", "real", "synthetic", "ci_low", "ci_high",
                                                "null_mean", "null_sd")},
                     "z_from_null": z})
    return rows


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or (list(rows[0].keys()) if rows else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buf.getvalue()


def _write_report(folder: Path, diag: dict, details: dict, samples: dict) -> None:
    from .diagnostics import report

    figures = report.render_figures(diag, details, samples)
    for name, png in figures.items():
        atomic_write_bytes(folder / "figures" / f"{name}.png", png)
    atomic_write_text(folder / "report.html", report.render_html(diag, figures))


def run_all(real_path, synthetic_path, out, cfg, train_path=None, image_channels: int | None = None,
            synthetic_split: str | None = None, progress=print) -> Path:
    """Load, run every selected family, write the output folder; returns its path. The folder is locked
    for the whole run: a second run into it fails at once instead of after minutes of work."""
    from .io import output_lock

    with output_lock(out):
        return _run_all(real_path, synthetic_path, out, cfg, train_path, image_channels, synthetic_split, progress)


def _run_all(real_path, synthetic_path, out, cfg, train_path, image_channels, synthetic_split, progress) -> Path:
    from .config import to_container
    from .diagnostics.runner import jsonable, largest_deviations, load_families, run_diagnostics

    dcfg = cfg.diagnostics
    require_free_output(out)  # atomic_dir checks again at the end; here it fails before minutes of work
    # utility trains segmenters and runs beside the metric families (`--only utility` runs it alone)
    only, skip = [f for f in dcfg.only if f != "utility"], [f for f in dcfg.skip if f != "utility"]
    families = [] if dcfg.only and not only else load_families(only, skip)  # a misspelt family fails here
    real = load_set(real_path, "real", dcfg.real_split, image_channels)
    synth = load_set(synthetic_path, "synthetic", synthetic_split or dcfg.real_split, image_channels)
    train = None
    if train_path:
        train = load_set(train_path, "train", "train", image_channels)
    elif real.source.get("kind") == "cache" and dcfg.real_split not in ("train", "all"):
        # the generator trained on this cache's train split: the natural reference for memorisation
        try:
            train = load_set(real_path, "train", "train", image_channels)
            train.source["inferred"] = "train split of the real cache"
        except UserError:
            train = None  # no train split: memorisation is skipped and the report says why
    if progress:
        progress(f"diagnose: real {len(real)} ({real.source['kind']}), synthetic {len(synth)} "
                 f"({synth.source['kind']}), {real.images.shape[1]} image channel(s), "
                 f"{'with' if real.masks is not None and synth.masks is not None else 'without'} masks")
    result = run_diagnostics(real, synth, dcfg, train=train, families=families, progress=progress)
    utility_run = (utility_in_run_all(real_path, synthetic_path, real, synth, train, cfg, image_channels, progress)
                   if wants_utility(dcfg) else None)
    metrics = jsonable(result["metrics"])
    auc = metrics.get("classifier_auc", {}).get("value")
    auc_d = metrics.get("classifier_auc_dithered", {}).get("value")
    diag = {
        "metrics": metrics,
        "severity": jsonable(result["severity"]),
        "headline": {"severity": result["severity"]["severity"], "classifier_auc": auc,
                     "classifier_auc_dithered": auc_d,
                     "largest_deviations": [{"metric": m, "z": jsonable(z)} for m, z in largest_deviations(metrics)]},
        "families": jsonable(result["families"]),
        "zbins": jsonable(result["zbins"]),
        "real_set": real.source, "synthetic_set": synth.source, "resampling": result["resampling"],
        "train_set": None if train is None else train.source,
        "config": to_container(cfg), "versions": versions(),
    }
    samples = {f"{side}_{k}": v for side, s in (("real", real), ("synthetic", synth))
               for k, v in _sample_grid(s).items()}
    utility_files: dict[str, str] = {}
    if utility_run is not None:  # its record goes to diag["utility"] (not `metrics`: it has no null)
        diag["utility"], diag["families"]["utility"], utility_examples, utility_files = utility_run
        samples.update(utility_examples)
    gen_cfg = generator_config_source(synthetic_path)
    with atomic_dir(out) as tmp:
        atomic_write_text(tmp / "diagnostics.json", json.dumps(diag, indent=1) + "\n")
        atomic_write_text(tmp / "summary.csv", csv_text(summary_rows(metrics)))
        atomic_write_text(tmp / "figure_data.json", json.dumps(result["details"]) + "\n")
        np.savez_compressed(tmp / "sample_grid.npz", **samples)
        for name, text in utility_files.items():  # utility.json, utility.csv
            atomic_write_text(tmp / name, text)
        if gen_cfg is not None:
            shutil.copyfile(gen_cfg, tmp / "generator_config.yaml")
        write_run_record(tmp, cfg)
        _write_report(tmp, diag, result["details"], samples)
    if progress:
        sev = diag["headline"]["severity"]
        progress(f"diagnose: severity {'n/a' if sev is None else f'{sev:.3f}'}"
                 + ("" if auc is None else f", classifier AUC {auc:.3f} (dithered {auc_d:.3f})")
                 + f"; report {Path(out) / 'report.html'}")
    return Path(out)


def read_diagnostics(folder) -> dict:
    path = Path(folder) / "diagnostics.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; point at a folder written by `jsddpm diagnose run-all`")
    try:
        diag = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); rerun `jsddpm diagnose run-all`") from None
    if not isinstance(diag, dict) or not isinstance(diag.get("metrics"), dict):
        raise UserError(f"{path}: not a diagnostics record (no 'metrics' mapping); rerun `jsddpm diagnose run-all`")
    return diag


def rerender_report(folder) -> Path:
    """Re-render report.html (and figures/) from diagnostics.json + the stored figure data."""
    folder = Path(folder)
    diag = read_diagnostics(folder)
    fig_path = folder / "figure_data.json"
    details = json.loads(fig_path.read_text()) if fig_path.is_file() else {}
    grid_path = folder / "sample_grid.npz"
    samples = {}
    if grid_path.is_file():
        with np.load(grid_path) as data:
            samples = {k: data[k] for k in data.files}
    _write_report(folder, diag, details, samples)
    return folder / "report.html"


# ---------------------------------------------------------------------------------- aggregate
def _run_config(folder: Path) -> tuple[dict, str]:
    """The generator's config when recorded (generator_config.yaml), else the run's own config.yaml."""
    from omegaconf import OmegaConf

    for name in ("generator_config.yaml", "config.yaml"):
        p = folder / name
        if p.is_file():
            return OmegaConf.to_container(OmegaConf.load(p), resolve=True) or {}, name
    return {}, ""


def aggregate(dirs, out, overwrite: bool = False) -> Path:
    """cross_experiment.csv, grouped tables per varying factor, tables.md over diagnostics folders."""
    from .diagnostics import aggregate as agg

    if len(dirs) < 2:
        raise UserError("aggregate: give at least two diagnostics folders")
    runs = []
    for d in dirs:
        d = Path(d)
        config, source = _run_config(d)
        runs.append(agg.Run(name=d.name, diagnostics=read_diagnostics(d), config=agg.flatten(config),
                            config_source=source, path=str(d)))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):  # same folder names in different parents: qualify them
        for r in runs:
            r.name = f"{Path(r.path).parent.name}/{r.name}"
    rows, factors = agg.experiment_rows(runs)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        atomic_write_text(tmp / "cross_experiment.csv", csv_text(rows))
        for factor in factors:
            table = agg.grouped_rows(rows, factor)
            atomic_write_text(tmp / f"by_{factor.replace('.', '_')}.csv", csv_text(table))
        atomic_write_text(tmp / "tables.md", agg.tables_markdown(runs, rows, factors))
        atomic_write_text(tmp / "variance_explained.json",
                          json.dumps(agg.variance_explained(rows, factors), indent=1) + "\n")
        write_run_record(tmp)
    return Path(out)


# ----------------------------------------------------------------------------------- criteria
def criteria(baseline, candidate, out=None) -> tuple[list[dict], str]:
    """Pass/fail table of the validation protocol; written to `out` (default: the candidate folder)."""
    from .diagnostics import criteria as crit

    rows = crit.evaluate(read_diagnostics(baseline), read_diagnostics(candidate),
                         names=(str(Path(baseline) / "diagnostics.json"), str(Path(candidate) / "diagnostics.json")))
    text = crit.format_table(rows)
    folder = Path(out) if out else Path(candidate)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "criteria.csv", csv_text(rows))
    atomic_write_text(folder / "criteria.json",
                      json.dumps({"baseline": str(baseline), "candidate": str(candidate), "criteria": rows,
                                  "all_passed": all(r["passed"] is True for r in rows)}, indent=1) + "\n")
    return rows, text


# ------------------------------------------------------------------------------------ utility
UTILITY_EXAMPLE_KEYS = ("images", "truth", "pred_real", "pred_synthetic")


def wants_utility(dcfg) -> bool:
    """run-all runs the utility family unless --skip utility, or --only lists other families only."""
    return "utility" not in dcfg.skip and (not dcfg.only or "utility" in dcfg.only)


def utility_training_set(real_path, real, dcfg, train=None, image_channels: int | None = None):
    """The segmenters' real training set: the real cache's `utility_train_split`, else `train` (--train)."""
    if real.source.get("kind") == "cache":
        split = str(dcfg.utility_train_split)
        if split in (dcfg.real_split, "all"):
            raise UserError(f"diagnostics.utility_train_split={split} overlaps the real test split "
                            f"'{dcfg.real_split}'; train the segmenters on another split (e.g. train)")
        return load_set(real_path, "train", split, image_channels)
    if train is not None:
        return train
    raise UserError(f"{real_path}: utility needs real training slices with masks; give a slice cache as --real "
                    "(its train split trains the segmenters) or the training set with --train")


def _check_not_test_split(real_path, synthetic_path, synth, dcfg) -> None:
    if (synth.source.get("kind") == "cache" and Path(synthetic_path).resolve() == Path(real_path).resolve()
            and synth.source.get("split") in (dcfg.real_split, "all")):
        raise UserError(f"{synthetic_path}: the synthetic set is the real test split itself; the segmenters would "
                        "train on the slices they are scored on (give --synthetic-split val, for example)")


def utility_outputs(result: dict, sets: dict) -> tuple[dict, dict[str, np.ndarray], dict[str, str]]:
    """(utility record for diagnostics.json, example arrays for the report, files: utility.json / .csv)."""
    from .diagnostics.runner import jsonable
    from .diagnostics.utility import csv_rows

    record = jsonable({k: v for k, v in result.items() if k != "examples"})
    record.update({f"{role}_set": s.source for role, s in sets.items()})
    examples = {f"utility_{k}": np.asarray(v) for k, v in result["examples"].items() if k in UTILITY_EXAMPLE_KEYS}
    files = {"utility.json": json.dumps(record, indent=1) + "\n", "utility.csv": csv_text(csv_rows(result))}
    return record, examples, files


def utility_in_run_all(real_path, synthetic_path, real, synth, train, cfg, image_channels, progress):
    """Run the utility family inside run-all: (record or None, family status, examples, files)."""
    import time

    from .diagnostics.utility import run_utility

    dcfg = cfg.diagnostics
    t0 = time.perf_counter()
    try:
        if real.masks is None or synth.masks is None:
            raise UserError("no lesion masks (image-only data)")
        _check_not_test_split(real_path, synthetic_path, synth, dcfg)
        utrain = utility_training_set(real_path, real, dcfg, train, image_channels)
        result = run_utility(utrain, synth, real, dcfg, progress=progress)
    except UserError as exc:  # the rest of the suite stands; the report says why utility is missing
        if progress:
            progress(f"  {'utility':<17} skipped: {exc}")
        return None, {"status": "skipped", "reason": str(exc), "seconds": 0.0}, {}, {}
    except Exception as exc:  # as for the other families: recorded, the report says it failed
        reason = f"{type(exc).__name__}: {exc}"
        if progress:
            progress(f"  {'utility':<17} FAILED: {reason}")
        return None, {"status": "error", "reason": reason, "seconds": time.perf_counter() - t0}, {}, {}
    seconds = time.perf_counter() - t0
    record, examples, files = utility_outputs(result, {"train": utrain, "synthetic": synth, "test": real})
    if progress:
        progress(f"  {'utility':<17} {seconds:6.1f} s  {result['verdict']}")
    return record, {"status": "ok", "seconds": seconds, "n_metrics": len(record["arms"])}, examples, files


def utility(real_path, synthetic_path, out, cfg, synthetic_split: str | None = None,
            image_channels: int | None = None, progress=print) -> Path:
    """`jsddpm diagnose utility`: segmenters trained on real / synthetic / both, scored on held-out real
    slices; writes utility.json, utility.csv, report.html (+ figures/), config.yaml, versions.json."""
    from .diagnostics import report
    from .diagnostics.utility import run_utility

    dcfg = cfg.diagnostics
    require_free_output(out)
    real = load_set(real_path, "real", dcfg.real_split, image_channels)
    if real.source.get("kind") != "cache":
        raise UserError(f"{real_path}: --real must be a slice cache (its '{dcfg.utility_train_split}' split "
                        f"trains the segmenters, its '{dcfg.real_split}' split scores them)")
    synth = load_set(synthetic_path, "synthetic", synthetic_split or dcfg.real_split, image_channels)
    _check_not_test_split(real_path, synthetic_path, synth, dcfg)
    train = utility_training_set(real_path, real, dcfg, image_channels=image_channels)
    if progress:
        progress(f"utility: real train {len(train)} slices, synthetic {len(synth)} ({synth.source['kind']}), "
                 f"real test {len(real)}; {dcfg.utility_seeds} seeds x {dcfg.utility_steps} steps per arm")
    result = run_utility(train, synth, real, dcfg, progress=progress)
    record, examples, files = utility_outputs(result, {"train": train, "synthetic": synth, "test": real})
    figures = report.utility_figures(record, examples)
    with atomic_dir(out) as tmp:
        for name, text in files.items():
            atomic_write_text(tmp / name, text)
        for name, png in figures.items():
            atomic_write_bytes(tmp / "figures" / f"{name}.png", png)
        atomic_write_text(tmp / "report.html", report.render_utility_page(record, figures))
        write_run_record(tmp, cfg)
    if progress:
        progress(f"utility: {result['verdict']}\nutility: {Path(out) / 'utility.json'}, {Path(out) / 'report.html'}")
    return Path(out)
