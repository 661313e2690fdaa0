"""The validation protocol's success criteria as a pass/fail table (candidate vs baseline diagnostics).

- wavelet HH level-1 energy ratio > 0.85
- GLCM dissimilarity within 7 % of real, gradient magnitude within 5 % of real
- spectral slope diff < 0.025
- synthetic background std < 0.005
- severity below the baseline's (only when both severities are means over the same components with
  the same definition: otherwise a UserError says why)
- dithered classifier AUC < 0.70
- real+synthetic Dice not below real: the utility family's paired Dice difference >= 0 (its CI in the
  detail); only for candidates diagnosed with the utility family
A criterion whose metric is missing is reported with passed = None (not a pass).
`jsddpm diagnose criteria` exits CRITERIA_NOT_MET unless every criterion passed (docs/failures.md).
"""

from __future__ import annotations

from ..errors import UserError
from .aggregate import check_record
from .severity import incomparable

CRITERIA_NOT_MET = 3  # the exit code of `jsddpm diagnose criteria` when a criterion failed or is missing


def _value(diag: dict, name: str):
    if name == "severity":
        return (diag.get("severity") or {}).get("severity")
    rec = diag.get("metrics", {}).get(name)
    return None if rec is None else rec.get("value")


def _real_synth(diag: dict, stem: str) -> tuple:
    """(real, synthetic) means of a texture feature: `<stem>_real` / `<stem>_synth` values."""
    return _value(diag, f"{stem}_real"), _value(diag, f"{stem}_synth")


def _row(criterion: str, value, target: str, passed, detail: str = "") -> dict:
    return {"criterion": criterion, "value": value, "target": target,
            "passed": None if value is None else bool(passed), "detail": detail}


def _within(diag: dict, stem: str, label: str, tolerance: float) -> dict:
    real, synth = _real_synth(diag, stem)
    if real is None or synth is None or real == 0:
        return _row(label, None, f"within {tolerance:.0%} of real", None)
    rel = abs(synth - real) / abs(real)
    return _row(label, rel, f"within {tolerance:.0%} of real", rel <= tolerance,
                f"synthetic {synth:.4g} vs real {real:.4g}")


def evaluate(baseline: dict, candidate: dict, names: tuple[str, str] = ("baseline", "candidate")) -> list[dict]:
    """Rows {criterion, value, target, passed (True / False / None when missing), detail}. `names`
    (e.g. the two diagnostics.json paths) name the records in the one-line refusals of check_record."""
    check_record(baseline, names[0])
    check_record(candidate, names[1])
    why = incomparable({"baseline": baseline.get("severity"), "candidate": candidate.get("severity")})
    if why:
        raise UserError(f"criteria: {why}")
    rows = []
    v = _value(candidate, "wavelet_hh_l1_ratio")
    rows.append(_row("wavelet HH level-1 energy ratio", v, "> 0.85", v is not None and v > 0.85))
    rows.append(_within(candidate, "glcm_dissimilarity", "GLCM dissimilarity vs real", 0.07))
    rows.append(_within(candidate, "gradient_mean", "gradient magnitude vs real", 0.05))
    v = _value(candidate, "spectral_slope_diff")
    rows.append(_row("spectral slope diff", v, "< 0.025", v is not None and v < 0.025))
    v = _value(candidate, "background_std_synth")
    rows.append(_row("synthetic background std", v, "< 0.005", v is not None and v < 0.005))
    v, b = _value(candidate, "severity"), _value(baseline, "severity")
    rows.append(_row("severity below the baseline's", None if b is None else v,
                     "< baseline" + ("" if b is None else f" ({b:.4g})"), v is not None and b is not None and v < b))
    v = _value(candidate, "classifier_auc_dithered")
    rows.append(_row("classifier AUC (dithered)", v, "< 0.70", v is not None and v < 0.70))
    if "utility" not in (candidate.get("families") or {}):  # run without the utility family: no row
        return rows
    gain = (candidate.get("utility") or {}).get("differences", {}).get("real_plus_synthetic - real", {})
    gain = gain.get("dice") or {}
    v = gain.get("value")
    rows.append(_row("real+synthetic Dice not below real", v, ">= 0", v is not None and v >= 0,
                     "" if None in (v, gain.get("ci_low"), gain.get("ci_high"))
                     else f"95% CI {gain['ci_low']:.3f} to {gain['ci_high']:.3f}"))
    return rows


def format_table(rows: list[dict]) -> str:
    def cell(v):
        return "missing" if v is None else f"{v:.4g}"

    status = {True: "PASS", False: "FAIL", None: "MISSING"}
    width = max(len(r["criterion"]) for r in rows)
    lines = [f"{'criterion':<{width}}  {'value':>9}  {'target':<22} result"]
    for r in rows:
        lines.append(f"{r['criterion']:<{width}}  {cell(r['value']):>9}  {r['target']:<22} {status[r['passed']]}"
                     + (f"  ({r['detail']})" if r["detail"] else ""))
    passed = sum(r["passed"] is True for r in rows)
    lines.append(f"{passed}/{len(rows)} criteria passed")
    return "\n".join(lines)
