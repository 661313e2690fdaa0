"""`jsddpm study`: train -> generate -> diagnose for every point of a config grid, resumable, then the
reference study's tables through `diagnose aggregate`.

The per-point work (`pipeline.run_point`) is passed in as a callable, so the resume logic can be
tested without training anything.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import UserError

DEFAULT_GRID = ("diffusion.prediction_type=epsilon,v,sample,edm", "loss.p=1.5,2.0")

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
        texts = values.split(",")
        if any(not t.strip() for t in texts):
            raise UserError(f"--grid '{item}': {key} has an empty value (a trailing or doubled comma); "
                            f"list its values as {key}=v1,v2")
        parsed = [_yaml_scalar(t) for t in texts]
        seen: dict = {}
        for i, value in enumerate(parsed):
            first = seen.setdefault(_same_value_key(value), i)
            if first != i:
                raise UserError(f"--grid '{item}': {key} lists {texts[first].strip()} and {texts[i].strip()}, the "
                                "same value; list each value once")
        grid[key] = parsed
    return grid


def _same_value_key(value):
    """Values the config would hold the same compare equal: 2, 2.0, 2e0 and 1e-3, 0.001 are one number
    each (YAML reads 1e-3 as a string; the config schema makes it a float)."""
    if isinstance(value, str):
        try:
            return ("number", float(value))
        except ValueError:
            return ("str", value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return ("number", float(value))
    return (type(value).__name__, repr(value))


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
    from .io import output_lock

    with output_lock(out):  # one study per folder (re-entrant: `jsddpm study` holds it already)
        return _run_points(base_overrides, grid, Path(out), run_point, base_config, log)


def _run_points(base_overrides, grid, out: Path, run_point, base_config, log) -> list[Path]:
    from .io import atomic_write_text, output_lock

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
        with output_lock(point_dir):
            diag = Path(run_point(overrides, point_dir)).resolve()  # a rerun may start from another folder
        atomic_write_text(done, json.dumps({"point": point, "diagnostics": str(diag)}, indent=2) + "\n")
        diag_dirs.append(diag)
    return diag_dirs


# ---------------------------------------------------------------------------------- tables
def finish_study(diag_dirs: Sequence[Path], out: Path, log: Callable[[str], None] = print) -> Path:
    """Aggregate the finished points (factors read from each run's saved generator config) into
    `out/aggregate` (cross_experiment.csv, grouped tables, variance shares) and `out/study.md`: the
    prediction-type table, the Lp table within the best prediction type, the share of variance in
    severity per factor, and a one-line summary naming the best configuration and dominant factor."""
    from .diagnostics.stage import aggregate
    from .io import atomic_write_text

    if len(diag_dirs) < 2:
        log("study: fewer than two finished points; nothing to aggregate")
        return out
    agg = aggregate(diag_dirs, out / "aggregate", overwrite=True)
    tables = (agg / "tables.md").read_text()
    atomic_write_text(out / "study.md", tables.replace("# Cross-experiment diagnostics", "# Study", 1))
    summary = next((line for line in tables.splitlines() if line.startswith("Lowest severity")), "")
    log(f"study: {len(diag_dirs)} experiments -> {out / 'study.md'}" + (f"\n{summary}" if summary else ""))
    return out / "study.md"
