"""Across experiments: one row per diagnostics run, factors from each run's generator config (never
from folder names), relative severity, grouped tables, and markdown tables laid out like the
reference study's (metric rows, experiment / factor-level columns, an "Ideal" column).

Pure functions on loaded dicts; `stage.aggregate` reads the folders and writes the files,
and `jsddpm study` can reuse `prediction_type_table`, `lp_table` and `variance_explained`.
Severities are ranked only when every run computed them over the same components with the same
definition (severity.comparable_key); otherwise `experiment_rows` refuses with one line saying why.
A record holding NaN or Inf, or a number where run-all writes a mapping, is refused the same way
(`check_record`, also used by `criteria`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np

from ..errors import UserError
from .severity import incomparable, relative_severity

# metric rows of the reference study's prediction-type table
PREDICTION_TYPE_METRICS = ("spectral_slope_diff", "spectral_js", "boundary_sharpness_ratio", "spatial_corr_ratio",
                           "background_std_synth", "wasserstein_all", "pixel_frac_significant", "hf_ratio_diff",
                           "texture_ks_mean", "severity")
# Lp table rows -> the metric holding the real reference value (None: the ideal is the reference)
LP_METRICS = {"wavelet_hh_l1_ratio": None, "glcm_contrast_synth": "glcm_contrast_real",
              "glcm_dissimilarity_synth": "glcm_dissimilarity_real", "gradient_mean_synth": "gradient_mean_real",
              "spectral_slope_diff": None}
IDEAL = {"spectral_slope_diff": "0", "spectral_js": "0", "boundary_sharpness_ratio": "1", "boundary_width_ratio": "1",
         "spatial_corr_ratio": "1", "background_std_synth": "= real", "wasserstein_all": "0",
         "pixel_frac_significant": "0", "hf_ratio_diff": "0", "texture_ks_mean": "0", "severity": "0",
         "relative_severity": "0", "wavelet_hh_l1_ratio": "1", "gradient_ratio": "1", "classifier_auc": "0.5",
         "classifier_auc_dithered": "0.5", "mask_mmd": "0", "lesion_rate_diff": "0", "lesion_count_ratio": "1",
         "pairing_dice_ratio": "1", "lesion_contrast_ratio": "1",
         "memorization_ratio": ">= 1",
         "glcm_contrast_synth": "= real", "glcm_dissimilarity_synth": "= real", "gradient_mean_synth": "= real",
         "utility_dice_synthetic": "= real arm", "utility_dice_gain": ">= 0"}
# downstream segmentation Dice per arm and the paired real+synthetic - real difference (`diagnose utility`)
UTILITY_METRICS = ("utility_dice_real", "utility_dice_synthetic", "utility_dice_real_plus_synthetic",
                   "utility_dice_gain")
EXPERIMENT_METRICS = tuple(dict.fromkeys(PREDICTION_TYPE_METRICS[:-1] + (
    "wavelet_hh_l1_ratio", "gradient_ratio", "glcm_contrast_synth", "glcm_dissimilarity_synth", "gradient_mean_synth",
    "mask_mmd", "lesion_rate_diff", "lesion_count_ratio", "pairing_dice_ratio", "lesion_contrast_ratio",
    "classifier_auc", "classifier_auc_dithered",
    "memorization_ratio") + UTILITY_METRICS))
# config keys that differ between runs without being experimental factors
_NOT_FACTORS = ("train.out_dir", "data.cache_dir", "data.image_root", "train.resume")


def utility_value(diag: dict, name: str):
    """`utility_dice_<arm>` / `utility_dice_gain` from the run's utility record (None without one)."""
    from .utility import metric_records

    util = diag.get("utility")
    return (metric_records(util).get(name) or {}).get("value") if util else None


@dataclass
class Run:
    name: str  # display name (the folder name)
    diagnostics: dict  # the run's diagnostics.json
    config: dict = field(default_factory=dict)  # flattened generator config: "loss.p" -> 1.5
    config_source: str = ""
    path: str = ""


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (tree or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def varying_factors(runs: list[Run]) -> list[str]:
    """Config keys whose value differs between runs (paths and the diagnostics section excluded)."""
    keys = sorted(set().union(*(r.config.keys() for r in runs)))
    return [k for k in keys
            if k not in _NOT_FACTORS and not k.startswith("diagnostics.")
            and len({repr(r.config.get(k)) for r in runs}) > 1]


def metric_value(diag: dict, name: str):
    if name == "severity":
        return (diag.get("severity") or {}).get("severity")
    if name in UTILITY_METRICS:
        return utility_value(diag, name)
    rec = diag.get("metrics", {}).get(name)
    return None if rec is None else rec.get("value")


def _non_finite(tree, path: str = ""):
    """(dotted path, value) of the first NaN or Inf number in a JSON tree, or None."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        key = f"{path}.{k}" if path else str(k)
        if isinstance(v, float) and not math.isfinite(v):
            return key, v
        found = _non_finite(v, key) if isinstance(v, dict | list) else None
        if found:
            return found
    return None


def check_record(diag: dict, where: str) -> None:
    """UserError (one line naming `where`, the file, and the field) unless `diag` reads as a record
    `jsddpm diagnose run-all` writes: `severity` and `utility` mappings (or absent), one mapping per metric,
    and no NaN or Inf anywhere (run-all writes a value it could not compute as null, so a non-finite
    number is a damaged or hand-edited file; ranked or compared, it would pass as a result)."""
    fix = "rerun `jsddpm diagnose run-all` for it"
    for name in ("severity", "utility"):
        if diag.get(name) is not None and not isinstance(diag[name], dict):
            raise UserError(f"{where}: '{name}' is {type(diag[name]).__name__} {diag[name]!r}, not the mapping "
                            f"run-all writes (e.g. {{\"{name}\": {{\"severity\": 0.3, ...}}}}); {fix}")
    bad = next((k for k, v in (diag.get("metrics") or {}).items() if v is not None and not isinstance(v, dict)), None)
    if bad is not None:
        raise UserError(f"{where}: metric '{bad}' is {diag['metrics'][bad]!r}, not a mapping with a 'value'; {fix}")
    found = _non_finite(diag)
    if found:
        raise UserError(f"{where}: {found[0]} is {found[1]}, not a finite number; {fix}")


def require_comparable(runs: list[Run]) -> None:
    """UserError (one line) when the runs' severities are means over different components or definitions."""
    why = incomparable({r.name: r.diagnostics.get("severity") for r in runs})
    if why:
        raise UserError(f"aggregate: {why}")


def experiment_rows(runs: list[Run]) -> tuple[list[dict], list[str]]:
    """cross_experiment rows (experiment, factors, severity, relative_severity, metrics) and the factors.
    Every run's record is checked first (check_record)."""
    for r in runs:
        check_record(r.diagnostics, str(PurePath(r.path) / "diagnostics.json") if r.path else r.name)
    require_comparable(runs)
    factors = varying_factors(runs)
    rel = relative_severity([r.diagnostics.get("metrics", {}) for r in runs])
    rows = []
    for r, rs in zip(runs, rel):
        row = {"experiment": r.name, "path": r.path, "config_source": r.config_source}
        row.update({f: _plain(r.config.get(f)) for f in factors})
        row["severity"] = metric_value(r.diagnostics, "severity")
        row["relative_severity"] = rs
        row.update({m: metric_value(r.diagnostics, m) for m in EXPERIMENT_METRICS})
        rows.append(row)
    return rows, factors


def _plain(v):
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def grouped_rows(rows: list[dict], factor: str) -> list[dict]:
    """One row per level of `factor`: count and the mean of severity, relative severity and metrics."""
    numeric = ["severity", "relative_severity", *EXPERIMENT_METRICS]
    out = []
    for level in sorted({repr(r.get(factor)) for r in rows}):
        members = [r for r in rows if repr(r.get(factor)) == level]
        entry = {factor: members[0].get(factor), "n_experiments": len(members)}
        entry.update({m: _mean(r.get(m) for r in members) for m in numeric})
        out.append(entry)
    return out


def variance_explained(rows: list[dict], factors: list[str], target: str = "severity") -> dict[str, float]:
    """Share of the variance of `target` explained by each factor alone (eta squared, one-way)."""
    y_all = [(r, r.get(target)) for r in rows if r.get(target) is not None]
    if len(y_all) < 2:
        return {f: 0.0 for f in factors}
    y = np.array([v for _, v in y_all], dtype=float)
    total = float(((y - y.mean()) ** 2).sum())
    out = {}
    for f in factors:
        levels = np.array([repr(r.get(f)) for r, _ in y_all])
        between = sum(float((levels == lv).sum()) * (y[levels == lv].mean() - y.mean()) ** 2 for lv in set(levels))
        out[f] = between / total if total > 0 else 0.0
    return out


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    v = float(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return f"{v:.2e}"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def markdown_table(columns: dict[str, dict], metrics, extra: dict[str, dict] | None = None,
                   ideal: dict | None = None) -> str:
    """Rows = metrics, one column per entry of `columns` (name -> {metric: value}), then extra columns
    (e.g. "Real") and "Ideal"."""
    ideal = IDEAL if ideal is None else ideal
    extra = extra or {}
    head = ["Metric", *columns, *extra, "Ideal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for m in metrics:
        cells = [m] + [_fmt(col.get(m)) for col in columns.values()]
        cells += [_fmt(col.get(m)) if not isinstance(col.get(m), str) else col[m] for col in extra.values()]
        cells.append(ideal.get(m, ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _columns_by(runs: list[Run], key: str | None, metrics) -> dict[str, dict]:
    """Column per level of config `key` (mean over its runs), or per run when key is None / absent."""
    if key is None or not any(key in r.config for r in runs):
        return {r.name: {m: metric_value(r.diagnostics, m) for m in metrics} for r in runs}
    cols = {}
    for level in sorted({str(r.config.get(key)) for r in runs}):
        members = [r for r in runs if str(r.config.get(key)) == level]
        cols[f"{key.split('.')[-1]}={level}"] = {m: _mean(metric_value(r.diagnostics, m) for r in members)
                                                 for m in metrics}
    return cols


def best_prediction_type(runs: list[Run]) -> str | None:
    """Prediction type with the lowest mean severity (None when the configs do not record it)."""
    require_comparable(runs)
    key = "diffusion.prediction_type"
    levels = {str(r.config.get(key)) for r in runs if key in r.config}
    scores = {lv: _mean(metric_value(r.diagnostics, "severity") for r in runs if str(r.config.get(key)) == lv)
              for lv in levels}
    scores = {k: v for k, v in scores.items() if v is not None}
    return min(scores, key=scores.get) if scores else None


def prediction_type_table(runs: list[Run]) -> str:
    cols = _columns_by(runs, "diffusion.prediction_type", PREDICTION_TYPE_METRICS)
    bg = _mean(metric_value(r.diagnostics, "background_std_real") for r in runs)
    ideal = dict(IDEAL, background_std_synth=f"{_fmt(bg)} (real)" if bg is not None else "= real")
    return markdown_table(cols, PREDICTION_TYPE_METRICS, ideal=ideal)


def lp_table(runs: list[Run]) -> str:
    """Lp columns within the best prediction type, with the real reference values."""
    best = best_prediction_type(runs)
    within = [r for r in runs if best is None or str(r.config.get("diffusion.prediction_type")) == best]
    cols = _columns_by(within, "loss.p", LP_METRICS)
    real = {m: (_mean(metric_value(r.diagnostics, ref) for r in within) if ref else None)
            for m, ref in LP_METRICS.items()}
    return markdown_table(cols, LP_METRICS, extra={"Real": real})


def tables_markdown(runs: list[Run], rows: list[dict], factors: list[str]) -> str:
    share = variance_explained(rows, factors)
    scored = [r for r in rows if r.get("severity") is not None]
    parts = ["# Cross-experiment diagnostics\n"]
    if scored:
        best = min(scored, key=lambda r: r["severity"])
        settings = "".join(f"; {f}={best.get(f)}" for f in factors)
        line = f"Lowest severity: **{best['experiment']}** ({_fmt(best['severity'])}{settings})"
        if share:
            top = max(share, key=share.get)
            line += f"; the factor explaining most of the variance in severity is **{top}** ({share[top]:.0%})"
        parts.append(line + ".\n")
    parts.append("## All experiments\n")
    cols = {r.name: {m: metric_value(r.diagnostics, m) for m in ("severity", *EXPERIMENT_METRICS)} for r in runs}
    for r, row in zip(runs, rows):
        cols[r.name]["relative_severity"] = row["relative_severity"]
    parts.append(markdown_table(cols, ("severity", "relative_severity", *EXPERIMENT_METRICS)))
    if "diffusion.prediction_type" in factors:
        parts += ["\n## By prediction type\n", prediction_type_table(runs)]
    if "loss.p" in factors:
        best = best_prediction_type(runs)
        parts += [f"\n## Lp norm within the best prediction type ({best})\n", lp_table(runs)]
    if share:
        parts.append("\n## Share of variance in severity explained by each factor\n")
        parts.append("| Factor | Share |\n|---|---|\n" + "".join(f"| {f} | {v:.1%} |\n" for f, v in share.items()))
    for f in factors:
        g = grouped_rows(rows, f)
        parts.append(f"\n## By {f}\n")
        parts.append(markdown_table({f"{f.split('.')[-1]}={e[f]}": e for e in g},
                                    ("severity", "relative_severity", *EXPERIMENT_METRICS)))
    return "\n".join(parts)
