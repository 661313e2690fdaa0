"""`jsddpm study`: train -> generate -> diagnose for every point of a config grid, resumable, then the
reference study's tables (prediction-type table, Lp table within the best prediction type, the share
of variance in severity explained by each factor, and a generated summary).

The grid logic and the tables are plain functions; the per-point work is `pipeline.run_point`, passed
in as a callable so the resume logic can be tested without training anything.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import UserError

DEFAULT_GRID = ("diffusion.prediction_type=epsilon,v,sample", "loss.p=1.5,2.0,2.5")

# rows of the prediction-type table: (metric, ideal value, label)
PREDICTION_TABLE = [
    ("spectral_slope_diff", 0.0, "Spectral slope diff"),
    ("spectral_js", 0.0, "JS divergence (bits)"),
    ("boundary_sharpness_ratio", 1.0, "Boundary sharpness ratio"),
    ("spatial_corr_ratio", 1.0, "Spatial correlation ratio"),
    ("background_std_synth", 0.0, "Background std"),
    ("wasserstein_all", 0.0, "Wasserstein (all)"),
    ("pixel_frac_significant", 0.0, "Pixel frac significant (FDR)"),
    ("hf_ratio_diff", 0.0, "HF ratio diff"),
    ("texture_ks_mean", 0.0, "Texture KS"),
    ("severity", 0.0, "Severity"),
]
# rows of the Lp table, with the real reference value shown beside each
LP_TABLE = [
    ("wavelet_hh_l1_ratio", 1.0, None, "Wavelet HH L1 ratio"),
    ("glcm_contrast_synth", None, "glcm_contrast_real", "GLCM contrast"),
    ("glcm_dissimilarity_synth", None, "glcm_dissimilarity_real", "GLCM dissimilarity"),
    ("gradient_mean_synth", None, "gradient_mean_real", "Gradient magnitude"),
    ("spectral_slope_diff", 0.0, None, "Spectral slope diff"),
]


def parse_grid(items: Sequence[str]) -> dict[str, list]:
    """`key=v1,v2,...` items -> {key: [values]} with YAML-typed values (1.5 -> float, true -> bool)."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise UserError(f"--grid '{item}': expected key=v1,v2,... e.g. loss.p=1.5,2.0")
        if key in grid:
            raise UserError(f"--grid: key '{key}' given twice; list all its values once")
        parsed = [_yaml_scalar(v) for v in values.split(",")]
        if len(set(map(repr, parsed))) != len(parsed):
            raise UserError(f"--grid '{item}': repeated value")
        grid[key] = parsed
    return grid


def _yaml_scalar(text: str):
    import yaml

    return yaml.safe_load(text.strip())


def grid_points(grid: dict[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_name(point: dict) -> str:
    """A readable folder label; the factors themselves are always read back from the saved config."""
    return "__".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())


def run_study(
    base_overrides: Sequence[str],
    grid: dict[str, list],
    out: Path,
    run_point: Callable[[list[str], Path], Path],
    base_config: str | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Run every grid point not yet finished; return the diagnostics folders in grid order.

    `run_point(overrides, point_dir)` does train -> generate -> diagnose for one point (itself resumable)
    and returns its diagnostics folder. A point is finished when `point_dir/done.json` exists; it is
    written only after `run_point` returns, so a crash mid-point resumes that point.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = {"base_config": base_config, "base_overrides": list(base_overrides), "grid": grid}
    plan_file = out / "study.json"
    if plan_file.exists():
        previous = json.loads(plan_file.read_text())
        if previous != json.loads(json.dumps(plan)):
            raise UserError(
                f"{plan_file}: this folder holds a study with another config or grid; "
                "use a new --out or delete the folder"
            )
    else:
        from .io import atomic_write_text

        atomic_write_text(plan_file, json.dumps(plan, indent=2) + "\n")

    points = grid_points(grid)
    diag_dirs = []
    for i, point in enumerate(points, 1):
        name = point_name(point)
        point_dir = out / "points" / name
        done = point_dir / "done.json"
        if done.exists():
            log(f"[{i}/{len(points)}] {name}: finished earlier, skipped")
            diag_dirs.append(Path(json.loads(done.read_text())["diagnostics"]))
            continue
        log(f"[{i}/{len(points)}] {name}: train -> generate -> diagnose")
        point_dir.mkdir(parents=True, exist_ok=True)
        overrides = list(base_overrides) + [f"{k}={v}" for k, v in point.items()]
        diag = Path(run_point(overrides, point_dir))
        from .io import atomic_write_text

        atomic_write_text(done, json.dumps({"point": point, "diagnostics": str(diag)}, indent=2) + "\n")
        diag_dirs.append(diag)
    return diag_dirs


# ------------------------------------------------------------------------------------ tables
def variance_share(rows: list[dict], factors: Sequence[str], response: str = "severity") -> dict[str, float]:
    """Share of the variance of `response` explained by each factor's main effect (eta squared:
    between-level sum of squares / total sum of squares); the remainder is interaction and noise."""
    ys = [r[response] for r in rows if r.get(response) is not None and math.isfinite(r[response])]
    if len(ys) < 2:
        return {f: float("nan") for f in factors}
    mean = sum(ys) / len(ys)
    total = sum((y - mean) ** 2 for y in ys)
    shares = {}
    for f in factors:
        groups: dict = {}
        for r in rows:
            if r.get(response) is not None and math.isfinite(r[response]):
                groups.setdefault(repr(r[f]), []).append(r[response])
        between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values())
        shares[f] = between / total if total > 0 else 0.0
    return shares


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _mean(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def study_tables(rows: list[dict], factors: Sequence[str]) -> tuple[str, dict]:
    """The study's markdown tables and a summary dict. `rows`: one per experiment with the factor
    values (read from saved configs) and the metric values (flat: metric name -> value)."""
    md, summary = [], {}
    pt_key, p_key = "diffusion.prediction_type", "loss.p"
    if not rows:
        return "No finished experiments.\n", summary

    best = min(rows, key=lambda r: r.get("severity") if r.get("severity") is not None else math.inf)
    summary["best"] = {f: best[f] for f in factors}
    summary["best_severity"] = best.get("severity")

    if pt_key in factors:
        types = sorted({r[pt_key] for r in rows})
        md.append("## Prediction type (mean over the other factors)\n")
        md.append("| Metric | " + " | ".join(types) + " | Ideal |")
        md.append("| --- |" + " --- |" * (len(types) + 1))
        for metric, ideal, label in PREDICTION_TABLE:
            cells = [_fmt(_mean(r.get(metric) for r in rows if r[pt_key] == t)) for t in types]
            md.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(ideal)} |")
        md.append("")
        by_type = {t: _mean(r.get("severity") for r in rows if r[pt_key] == t) for t in types}
        best_type = min(by_type, key=lambda t: by_type[t] if by_type[t] is not None else math.inf)
        summary["best_prediction_type"] = best_type
    else:
        best_type = None

    if p_key in factors:
        sub = [r for r in rows if best_type is None or r[pt_key] == best_type]
        ps = sorted({r[p_key] for r in sub})
        title = f" within prediction type `{best_type}`" if best_type else ""
        md.append(f"## Lp norm{title}\n")
        md.append("| Metric | " + " | ".join(f"p={p}" for p in ps) + " | Real / Ideal |")
        md.append("| --- |" + " --- |" * (len(ps) + 1))
        for metric, ideal, real_key, label in LP_TABLE:
            cells = [_fmt(_mean(r.get(metric) for r in sub if r[p_key] == p)) for p in ps]
            ref = ideal if real_key is None else _mean(r.get(real_key) for r in sub)
            md.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(ref)} |")
        md.append("")

    shares = variance_share(rows, factors)
    summary["variance_share"] = shares
    md.append("## Share of the variance in severity explained by each factor\n")
    md.append("| Factor | Share |")
    md.append("| --- | --- |")
    for f, s in shares.items():
        md.append(f"| {f} | {_fmt(s)} |")
    residual = 1.0 - sum(s for s in shares.values() if math.isfinite(s))
    md.append(f"| interaction + noise | {_fmt(residual)} |")
    md.append("")

    dominant = max(shares, key=lambda f: shares[f] if math.isfinite(shares[f]) else -1.0)
    summary["dominant_factor"] = dominant
    best_desc = ", ".join(f"{f}={best[f]}" for f in factors)
    md.append("## Summary\n")
    md.append(
        f"The best configuration is {best_desc} (severity {_fmt(best.get('severity'))}). "
        f"The dominant factor is `{dominant}`, explaining {_fmt(100 * shares[dominant])}% of the variance "
        f"in severity across the {len(rows)} experiments."
    )
    md.append("")
    return "\n".join(md), summary
