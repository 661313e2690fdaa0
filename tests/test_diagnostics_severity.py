"""Severity counts mask collapse, floors degenerate nulls at each metric's resolution, and refuses to
compare means over different components (issue 8)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jsddpm.config import load_config
from jsddpm.diagnostics import aggregate, criteria
from jsddpm.diagnostics import severity as sev
from jsddpm.diagnostics.families import load_families
from jsddpm.diagnostics.runner import run_diagnostics
from jsddpm.diagnostics.sets import ImageSet
from jsddpm.errors import UserError

MASK_COMPONENTS = ("mask_mmd", "boundary_sharpness_ratio", "lesion_rate_diff", "lesion_count_ratio")


def _cfg(*overrides):
    return load_config(None, ["diagnostics.n_bootstrap=10", "diagnostics.n_null_repeats=20", *overrides]).diagnostics


def test_a_generator_without_lesions_scores_worse_than_one_with_lesions_like_real(demo_cache):
    from jsddpm.data.cache import load_cache

    c = load_cache(demo_cache)
    images, masks = np.asarray(c.images, dtype=np.float32), np.asarray(c.masks)[:, 0] > 0
    first = np.isin(c.index["subject_id"], ["sub-001", "sub-002", "sub-003", "sub-007", "sub-008"])
    real = ImageSet(images[first], masks[first], c.index["subject_id"][first], label=c.index["label"][first])
    families = load_families(only=["spectral", "intensity", "morphology", "boundary"])
    result = {}
    for name, synth_masks in (("like real", masks[~first]), ("no lesions", np.zeros_like(masks[~first]))):
        synth = ImageSet(images[~first], synth_masks, label=c.index["label"][~first])
        result[name] = run_diagnostics(real, synth, _cfg(), families=families, progress=None, strict=True)["severity"]
    like, none = result["like real"], result["no lesions"]
    # before: the mask components were dropped, and no lesions scored 0.001 against 0.028 for lesions like real
    assert none["severity"] > like["severity"] + 0.3
    for name in MASK_COMPONENTS:
        assert name not in none["missing"] and none["components"][name]["score"] > 0.99, name
    assert none["components"]["mask_mmd"]["absent_in_synthetic"] == "lesions"
    assert none["component_set"] == like["component_set"]  # collapse does not change what is averaged


def test_absolute_floors_keep_degenerate_nulls_finite():
    """Real background exactly -1 (background SD 0 in every null draw), no pixel ever significant."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32] - 15.5
    head = (yy / 12) ** 2 + (xx / 10) ** 2 < 1

    def heads(n, background_sd):
        texture = rng.normal(0.0, 0.1, (n, 32, 32))
        x = np.where(head, texture, -1.0 + rng.normal(0.0, background_sd, (n, 32, 32)) if background_sd else -1.0)
        return ImageSet(x[:, None].astype(np.float32))

    real = heads(40, 0.0)
    fams = load_families(only=["background"])
    for background_sd, max_z in ((6e-7, 0.01), (0.0018, 1.5)):  # float noise; a background passing `criteria`
        res = run_diagnostics(real, heads(40, background_sd), _cfg(), families=fams, progress=None, strict=True)
        rec = res["metrics"]["background_std_synth"]
        assert rec["null_sd"] == 0.0 and rec["null_mean"] == 0.0
        assert res["severity"]["components"]["background_std_synth"]["z"] < max_z  # before: 6e2 and 2e6
        assert res["severity"]["components"]["background_std_synth"]["score"] == 0.0  # before: 1.0
    one_pixel = {"pixel_frac_significant": {"value": 1 / 4096, "null_mean": 0.0, "null_sd": 0.0}}
    assert sev.severity(one_pixel, components={"pixel_frac_significant": "greater"})["components"][
        "pixel_frac_significant"]["z"] < 1


def _diag(severity: float, components: list[str], version: int | None = None) -> dict:
    version = sev.SEVERITY_VERSION if version is None else version
    return {"metrics": {}, "severity": {"severity": severity, "component_set": components, "version": version,
                                        "components": {c: {"z": 0.0, "score": 0.0} for c in components}}}


def test_aggregate_and_criteria_refuse_severities_over_different_components(tmp_path, capsys):
    full, image_only = _diag(0.2, ["mask_mmd", "spectral_js"]), _diag(0.1, ["spectral_js"])
    runs = [aggregate.Run("joint", full), aggregate.Run("image_only", image_only)]
    with pytest.raises(UserError, match="only 'joint' has mask_mmd") as exc:
        aggregate.experiment_rows(runs)
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="criteria: .*different components"):
        criteria.evaluate(full, image_only)
    older = _diag(0.1, ["mask_mmd", "spectral_js"], version=1)  # an output of the earlier definition
    with pytest.raises(UserError, match="computed differently"):
        aggregate.experiment_rows([aggregate.Run("new", full), aggregate.Run("old", older)])
    aggregate.experiment_rows([aggregate.Run("a", full), aggregate.Run("b", _diag(0.3, ["mask_mmd", "spectral_js"]))])
    # and on the command line: exit code 2, one line
    from jsddpm.cli import main

    for name, diag in (("joint", full), ("image_only", image_only)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "diagnostics.json").write_text(json.dumps(diag))
    assert main(["diagnose", "criteria", "--baseline", str(tmp_path / "joint"),
                 "--candidate", str(tmp_path / "image_only")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_relative_severity_counts_an_absent_component_as_the_worst():
    comps = {"mask_mmd": "greater"}
    runs = [{"mask_mmd": {"value": v, "null_mean": 0.0, "null_sd": 1.0}} for v in (0.0, 2.0)]
    runs.append({"mask_mmd": {"value": None, "null_mean": 0.0, "null_sd": 1.0, "absent_in_synthetic": "lesions"}})
    assert sev.relative_severity(runs, comps) == pytest.approx([0.0, 1.0, 1.0])
