"""The diagnose stages: read the sets (sets.py), run the families (runner.py), write the outputs. The
wing's output edge: with sets.py, the only diagnostics module that touches files.

- `run_all`: every selected family into one folder (written atomically): `diagnostics.json`,
  `summary.csv`, `figure_data.json` + `sample_grid.npz` (what `rerender_report` re-renders from),
  `figures/*.png`, `report.html`, the files families hand over (utility.json, utility.csv),
  `config.yaml` + `versions.json`, and `generator_config.yaml` (a copy of the synthetic source's config
  when it has one: `aggregate` reads experiment factors from it);
- `add_report_section`: a section from outside the diagnostics (the demo's inpainted lesions), stored
  in `report_sections.json` so that re-rendering keeps it;
- `rerender_report`, `utility` (the utility family on its own), `aggregate` and `criteria` (over
  finished folders).
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_text,
    output_lock,
    require_free_output,
    versions,
    write_run_record,
)
from ..segmentation import segmenter_store
from . import report, report_html
from .common import csv_text, json_text, jsonable
from .families import BY_NAME, check_not_test_split, load_families
from .report_html import Section, SectionInput
from .runner import largest_deviations, run_diagnostics
from .sets import (
    Sets,
    generator_config_source,
    generator_train_set,
    load_set,
    real_training_set,
    stored_reference_segmenter,
)

N_GRID = 8  # samples per set shown in the report's grid
SECTIONS_FILE = "report_sections.json"  # sections added after the run (add_report_section)


# ------------------------------------------------------------------------------------ run-all
def run_all(real_path, synthetic_path, out, cfg, train_path=None, image_channels: int | None = None,
            synthetic_split: str | None = None, progress=print) -> Path:
    """Load, run every selected family, write the output folder; returns its path. The folder is locked
    for the whole run: a second run into it fails at once instead of after minutes of work."""
    with output_lock(out):
        return _run_all(real_path, synthetic_path, out, cfg, train_path, image_channels, synthetic_split, progress)


def _run_all(real_path, synthetic_path, out, cfg, train_path, image_channels, synthetic_split, progress) -> Path:
    dcfg = cfg.diagnostics
    require_free_output(out)  # atomic_dir checks again at the end; here it fails before minutes of work
    families = load_families(dcfg.only, dcfg.skip)  # a misspelt family fails here
    real = load_set(real_path, "real", dcfg.real_split, image_channels)
    synth = load_set(synthetic_path, "synthetic", synthetic_split or dcfg.real_split, image_channels)
    train = generator_train_set(real_path, real, dcfg, train_path, image_channels)
    if progress:
        progress(f"diagnose: real {len(real)} ({real.source['kind']}), synthetic {len(synth)} "
                 f"({synth.source['kind']}), {real.images.shape[1]} image channel(s), "
                 f"{'with' if real.masks is not None and synth.masks is not None else 'without'} masks")
    with atomic_dir(out) as tmp:
        segmenter = None
        if real.source.get("kind") == "cache":  # else trained on --train, not stored
            # the cache's own store by default: generation's fidelity filter keeps its segmenter there too
            store = Path(dcfg.segmenter_dir) if dcfg.segmenter_dir else segmenter_store(real_path)
            segmenter = partial(stored_reference_segmenter, real_path, dcfg, store, _generation_folder(synth),
                                None, progress)
        result = run_diagnostics(real, synth, dcfg, train=train, families=families, progress=progress,
                                 real_train=partial(real_training_set, real_path, real, dcfg, train, image_channels),
                                 segmenter=segmenter)
        _write_run_all(tmp, cfg, result, real, synth, train, synthetic_path)
    if progress:
        sev = result["severity"]["severity"]
        auc = result["metrics"].get("classifier_auc", {}).get("value")
        auc_d = result["metrics"].get("classifier_auc_dithered", {}).get("value")
        progress(f"diagnose: severity {'n/a' if sev is None else f'{sev:.3f}'}"
                 + ("" if auc is None else f", classifier AUC {auc:.3f} (dithered {auc_d:.3f})")
                 + f"; report {Path(out) / 'report.html'}")
    return Path(out)


def _generation_folder(s) -> tuple[Path, ...]:
    """The folder of a synthetic set read from a generation folder (where generation keeps its segmenter)."""
    return (Path(s.source["path"]),) if s.source.get("kind") == "generation" else ()


def _write_run_all(tmp: Path, cfg, result: dict, real, synth, train, synthetic_path) -> None:
    from ..config import to_container

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
        **result["records"],  # a family's own record (utility: arms, verdict), beside `metrics`
    }
    samples = {f"{side}_{k}": v for side, s in (("real", real), ("synthetic", synth))
               for k, v in _sample_grid(s).items()}
    samples.update(result["examples"])
    gen_cfg = generator_config_source(synthetic_path)
    atomic_write_text(tmp / "diagnostics.json", json_text(diag))
    atomic_write_text(tmp / "summary.csv", csv_text(summary_rows(metrics)))
    atomic_write_text(tmp / "figure_data.json", json.dumps(result["details"]) + "\n")
    np.savez_compressed(tmp / "sample_grid.npz", **samples)
    for name, text in result["files"].items():  # e.g. utility.json, utility.csv, pairing.csv
        atomic_write_text(tmp / name, text)
    if gen_cfg is not None:
        shutil.copyfile(gen_cfg, tmp / "generator_config.yaml")
    write_run_record(tmp, cfg)
    _write_report(tmp, diag, result["details"], samples)


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
    from .severity import metric_z

    rows = []
    for name, rec in metrics.items():
        z = metric_z(name, rec)  # absolute SD floors; inf (written as "inf") when absent in synthetic
        rows.append({"metric": name, "family": rec.get("family"),
                     **{k: rec.get(k) for k in ("value", "real", "synthetic", "ci_low", "ci_high",
                                                "null_mean", "null_sd")},
                     "z_from_null": z})
    return rows


# ------------------------------------------------------------------------------------- report
def _write_report(folder: Path, diag: dict, details: dict, samples: dict, extra: list[Section] = ()) -> None:
    figures, html = report.render(diag, details, samples, extra)
    for name, png in figures.items():
        atomic_write_bytes(folder / "figures" / f"{name}.png", png)
    atomic_write_text(folder / "report.html", html)


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


def _stored_sections(folder: Path) -> dict[str, dict]:
    path = folder / SECTIONS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def rerender_report(folder) -> Path:
    """Re-render report.html (and figures/) from diagnostics.json, the stored figure data and sample
    arrays, and the sections added by `add_report_section`."""
    folder = Path(folder)
    with output_lock(folder):
        diag = read_diagnostics(folder)
        fig_path = folder / "figure_data.json"
        details = json.loads(fig_path.read_text()) if fig_path.is_file() else {}
        grid_path = folder / "sample_grid.npz"
        samples = {}
        if grid_path.is_file():
            with np.load(grid_path) as data:
                samples = {k: data[k] for k in data.files}
        extra = []
        for sec in _stored_sections(folder).values():
            pngs = [folder / "figures" / f"{f}.png" for f in sec.get("figures", [])]
            extra.append(Section(sec["title"], sec["body"], {p.stem: p.read_bytes() for p in pngs if p.is_file()}))
        _write_report(folder, diag, details, samples, extra)
    return folder / "report.html"


def add_report_section(folder, name: str, section: Section) -> Path:
    """Store `section` (under `name`; a second call with the name replaces it) beside a finished
    diagnostics folder's record, and re-render its report with it; returns report.html. Its figures go
    to figures/<figure>.png like the families' (the body embeds them already)."""
    folder = Path(folder)
    with output_lock(folder):
        read_diagnostics(folder)  # a finished diagnostics folder, or a one-line error
        sections = _stored_sections(folder)
        sections[name] = {"title": section.title, "body": section.body, "figures": list(section.figures)}
        for fig, png in section.figures.items():
            atomic_write_bytes(folder / "figures" / f"{fig}.png", png)
        atomic_write_text(folder / SECTIONS_FILE, json_text(sections))
        return rerender_report(folder)


# ------------------------------------------------------------------------------------ utility
def utility(real_path, synthetic_path, out, cfg, synthetic_split: str | None = None,
            image_channels: int | None = None, progress=print) -> Path:
    """`jsddpm diagnose utility`: the utility family on its own: segmenters trained on real / synthetic /
    both, scored on held-out real slices; writes its files (utility.json, utility.csv), report.html
    (+ figures/), config.yaml, versions.json. The folder is locked for the whole run."""
    with output_lock(out):
        return _utility(real_path, synthetic_path, out, cfg, synthetic_split, image_channels, progress)


def _utility(real_path, synthetic_path, out, cfg, synthetic_split, image_channels, progress) -> Path:
    dcfg = cfg.diagnostics
    family = BY_NAME["utility"]
    require_free_output(out)
    real = load_set(real_path, "real", dcfg.real_split, image_channels)
    if real.source.get("kind") != "cache":
        raise UserError(f"{real_path}: --real must be a slice cache (its '{dcfg.utility_train_split}' split "
                        f"trains the segmenters, its '{dcfg.real_split}' split scores them)")
    synth = load_set(synthetic_path, "synthetic", synthetic_split or dcfg.real_split, image_channels)
    sets = Sets(real, synth, load_real_train=partial(real_training_set, real_path, real, dcfg, None, image_channels))
    check_not_test_split(sets, dcfg)
    if progress:
        progress(f"utility: real train {len(sets.real_train)} slices, synthetic {len(synth)} "
                 f"({synth.source['kind']}), real test {len(real)}; {dcfg.utility_seeds} seeds x "
                 f"<= {dcfg.utility_steps} steps per segmenter (early stopping)")
    result = family.run(sets, dcfg, progress)
    section = family.report_section(SectionInput(family.name, family.title, {family.name: result.record},
                                                 examples=result.examples))
    with atomic_dir(out) as tmp:
        for name, text in result.files.items():
            atomic_write_text(tmp / name, text)
        for name, png in section.figures.items():
            atomic_write_bytes(tmp / "figures" / f"{name}.png", png)
        atomic_write_text(tmp / "report.html", report_html.utility_page(result.record, section))
        write_run_record(tmp, cfg)
    if progress:
        progress(f"utility: {result.summary}\n"
                 f"utility: {Path(out) / 'utility.json'}, {Path(out) / 'report.html'}")
    return Path(out)


# ------------------------------------------------------------------------- across finished runs
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
    from . import aggregate as agg

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
        atomic_write_text(tmp / "variance_explained.json", json_text(agg.variance_explained(rows, factors)))
        write_run_record(tmp)
    return Path(out)


def criteria(baseline, candidate, out=None) -> tuple[list[dict], str]:
    """Pass/fail table of the validation protocol; written to `out` (default: the candidate folder)."""
    from . import criteria as crit

    rows = crit.evaluate(read_diagnostics(baseline), read_diagnostics(candidate),
                         names=(str(Path(baseline) / "diagnostics.json"), str(Path(candidate) / "diagnostics.json")))
    text = crit.format_table(rows)
    folder = Path(out) if out else Path(candidate)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "criteria.csv", csv_text(rows))
    atomic_write_text(folder / "criteria.json",
                      json_text({"baseline": str(baseline), "candidate": str(candidate), "criteria": rows,
                                 "all_passed": all(r["passed"] is True for r in rows)}))
    return rows, text
