"""The diagnostics engine: bootstrap CIs, the real-vs-real null, severity, family selection."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from jsddpm.config import load_config
from jsddpm.diagnostics import severity as sev
from jsddpm.diagnostics.common import Features, metric
from jsddpm.diagnostics.families import load_families
from jsddpm.diagnostics.runner import bootstrap_indices, null_indices, run_diagnostics
from jsddpm.diagnostics.sets import ImageSet
from jsddpm.errors import UserError


def _cfg(*overrides):
    return load_config(None, ["diagnostics.n_bootstrap=40", "diagnostics.n_null_repeats=6", *overrides]).diagnostics


def _cache_set(path, subjects=None) -> ImageSet:
    from jsddpm.data.cache import load_cache

    c = load_cache(path)
    idx = np.arange(len(c)) if subjects is None else np.flatnonzero(np.isin(c.index["subject_id"], subjects))
    return ImageSet(np.asarray(c.images[idx], dtype=np.float32), np.asarray(c.masks[idx])[:, 0].astype(bool),
                    c.index["subject_id"][idx], c.index["zbin"][idx])


# a stand-in family with an analytic answer: difference of per-image means
MEAN_FAMILY = SimpleNamespace(
    NAME="mean_diff", NEEDS_MASK=False,
    features=lambda images, masks, cfg: Features(len(images), {"m": images.mean(axis=(1, 2, 3))}),
    compare=lambda r, s, cfg: {"mean_diff": metric(s["m"].mean() - r["m"].mean(), r["m"].mean(), s["m"].mean())},
)


def test_bootstrap_ci_contains_value_and_matches_analytic_standard_error():
    rng = np.random.default_rng(0)
    real = ImageSet(rng.normal(0.0, 0.2, (400, 1, 4, 4)).astype(np.float32))
    synth = ImageSet(rng.normal(0.1, 0.2, (300, 1, 4, 4)).astype(np.float32))
    res = run_diagnostics(real, synth, _cfg("diagnostics.n_bootstrap=400"), families=[MEAN_FAMILY], progress=None)
    m = res["metrics"]["mean_diff"]
    assert m["ci_low"] < m["value"] < m["ci_high"]
    per_image_sd = 0.2 / 4  # mean of 16 iid pixels
    se = per_image_sd * math.sqrt(1 / 400 + 1 / 300)
    assert (m["ci_high"] - m["ci_low"]) / (2 * 1.96) == pytest.approx(se, rel=0.2)
    # the null is real vs real at the compared sizes: centred on 0 with the same SD as the comparison
    assert abs(m["null_mean"]) < 3 * se
    assert m["null_sd"] == pytest.approx(se, rel=0.5)
    assert res["families"]["mean_diff"]["status"] == "ok"


def test_subject_resampling_keeps_subjects_whole_and_null_draws_match_the_compared_sizes():
    rng = np.random.default_rng(1)
    subjects = np.repeat(np.array(["a", "b", "c", "d", "e", "f"]), [5, 7, 3, 6, 4, 5])
    sizes = {s: int(np.sum(subjects == s)) for s in set(subjects)}

    def whole(idx):
        return all(int(np.sum(subjects[idx] == s)) % sizes[s] == 0 for s in sizes)

    for _ in range(20):
        idx = bootstrap_indices(subjects, len(subjects), rng)
        assert whole(idx)
        # null: a real-like side in whole subjects, a synthetic-like side of 50 independent slices
        a, b = null_indices(subjects, len(subjects), None, 50, rng)
        assert whole(a) and len(b) == 50 and b.max() < len(subjects)
        # a synthetic set with its own subjects: whole real subjects up to about its size
        a, b = null_indices(subjects, len(subjects), np.arange(12) // 4, 12, rng)
        assert whole(b) and abs(len(b) - 12) <= 4


def test_severity_score_mapping_and_relative_severity():
    # the gate is z > z0; beyond it the score follows the excess magnitude (issue 19: it was 1 - exp(-(z - 2) / 4),
    # which saturated within a few null SDs whatever the size of the defect)
    assert sev.component_score(0.0, 5.0, 1.0) == 0.0 and sev.component_score(2.0, 5.0, 1.0) == 0.0
    assert sev.component_score(2.5, 0.5, 0.5) == pytest.approx(1 - math.exp(-1))
    assert sev.component_score(50.0, 1.0, 0.5) < sev.component_score(3.0, 2.0, 0.5)  # size counts, not z
    assert sev.null_z(0.5, 1.0, 0.1, "greater") == 0.0  # below the null level is not worse
    assert sev.null_z(0.5, 1.0, 0.1, "two-sided") == pytest.approx(5.0)
    comps = {"a": "greater", "b": "two-sided"}
    runs = [{"a": {"value": v, "null_mean": 0.0, "null_sd": 1.0}, "b": {"value": w, "null_mean": 1.0, "null_sd": 1.0}}
            for v, w in ((0.0, 1.0), (2.0, 1.5), (4.0, 0.0))]
    # a: deviations 0, 2, 4 -> 0, .5, 1; b: 0, .5, 1 -> 0, .5, 1
    assert sev.relative_severity(runs, comps) == pytest.approx([0.0, 0.5, 1.0])


def test_identical_sets_score_zero_and_every_difference_metric_is_ideal(demo_cache):
    real = _cache_set(demo_cache)
    # pairing needs a reference segmenter: any predictor scores identical sets alike (a threshold stands in
    # for a trained one); utility, which would train segmenters of its own, has no severity component
    threshold = SimpleNamespace(predict=lambda images: images[:, 0] > 0.6, info={"source": "stand-in"})
    res = run_diagnostics(real, real, _cfg(), families=load_families(skip=["classifier", "utility"]), progress=None,
                          strict=True, real_train=lambda: real, segmenter=lambda: threshold)
    m = res["metrics"]
    assert res["severity"]["severity"] == 0.0
    assert not res["severity"]["missing"]
    for name in ("spectral_slope_diff", "spectral_js", "hf_ratio_diff", "texture_ks_mean", "wasserstein_all",
                 "pixel_frac_significant", "ks_all"):
        assert m[name]["value"] == pytest.approx(0.0, abs=1e-9), name
    for name in ("wavelet_hh_l1_ratio", "wavelet_hl_l1_ratio", "gradient_ratio", "spatial_corr_ratio",
                 "boundary_sharpness_ratio", "pairing_dice_ratio", "lesion_contrast_ratio"):
        assert m[name]["value"] == pytest.approx(1.0, abs=1e-9), name
    assert res["resampling"]["real"] == "subjects (10)"
    assert res["zbins"]["spectral_slope_diff"]  # z-bins known -> per-bin breakdown
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in res["zbins"]["spectral_slope_diff"].values())


def test_subject_disjoint_halves_of_real_data_score_near_zero(demo_cache):
    real = _cache_set(demo_cache, ["sub-001", "sub-002", "sub-003", "sub-007", "sub-008"])
    other = _cache_set(demo_cache, ["sub-004", "sub-005", "sub-006", "sub-009", "sub-010"])
    res = run_diagnostics(real, other, _cfg(), families=load_families(only=["spectral", "wavelet", "texture",
                                                                             "background", "pixel", "intensity"]),
                          progress=None, strict=True)
    assert res["severity"]["severity"] < 0.15
    # subjects differ, so some pixels differ; but no more than between halves of the real set
    frac = res["metrics"]["pixel_frac_significant"]
    assert frac["value"] < 0.1 and frac["value"] <= frac["null_mean"] + 3 * frac["null_sd"]


def test_image_only_data_skip_mask_families_and_bad_selection():
    rng = np.random.default_rng(0)
    imgs = rng.uniform(-1, 1, (8, 1, 16, 16)).astype(np.float32)
    fams = load_families(only=["morphology", "boundary"])
    res = run_diagnostics(ImageSet(imgs), ImageSet(imgs[::-1].copy()), _cfg(), families=fams, progress=None)
    assert {f["status"] for f in res["families"].values()} == {"skipped"}
    assert "image-only" in res["families"]["morphology"]["reason"]
    with pytest.raises(UserError, match="unknown family 'spectrum'"):
        load_families(only=["spectrum"])
    with pytest.raises(UserError, match="differ in channels or size"):
        run_diagnostics(ImageSet(imgs), ImageSet(imgs[:, :, :8]), _cfg(), families=[MEAN_FAMILY], progress=None)


def test_a_trained_family_hands_its_metrics_record_files_examples_and_section_through_the_runner():
    """The registry's contract for trained families (utility, the coming pairing family): needs are checked
    first, a UserError skips the family, and what it returns reaches the output and the report."""
    from jsddpm.diagnostics import report
    from jsddpm.diagnostics.families import MASKS, REAL_TRAIN, Family, FamilyResult
    from jsddpm.diagnostics.report_html import Section

    rng = np.random.default_rng(0)
    imgs = rng.uniform(-1, 1, (8, 1, 16, 16)).astype(np.float32)
    masks = np.zeros((8, 16, 16), dtype=bool)
    masks[:, 4:8, 4:8] = True
    seen = {}

    def run(sets, cfg, progress):
        seen["real_train"] = len(sets.real_train)
        return FamilyResult({"pair_score": metric(0.25)}, record={"verdict": "fine"},
                            files={"pair.csv": "a,b\n1,2\n"}, examples={"images": imgs[:2]}, summary="fine")

    def section(view):
        assert view.record == {"verdict": "fine"} and view.examples["images"].shape == (2, 1, 16, 16)
        return Section(view.title, f"<p>{view.record['verdict']}: {view.metric_names}</p>", {"pair_fig": b"png"})

    pair = Family("pair", "14. Pairing", frozenset({MASKS, REAL_TRAIN}), run=run, section=section)
    real, synth = ImageSet(imgs, masks), ImageSet(imgs[::-1].copy(), masks)
    no_train = run_diagnostics(real, synth, _cfg(), families=[pair], progress=None)["families"]["pair"]
    assert no_train["status"] == "skipped" and "training slices" in no_train["reason"]
    no_masks = run_diagnostics(ImageSet(imgs), ImageSet(imgs), _cfg(), families=[pair], progress=None,
                               real_train=lambda: real)
    assert "image-only" in no_masks["families"]["pair"]["reason"] and not seen

    def refuse():
        raise UserError("cache: no train split")

    refused = run_diagnostics(real, synth, _cfg(), families=[pair], progress=None, real_train=refuse)
    assert refused["families"]["pair"] == {"status": "skipped", "reason": "cache: no train split", "seconds": 0.0}

    res = run_diagnostics(real, synth, _cfg(), families=[pair, MEAN_FAMILY], progress=None, real_train=lambda: real)
    assert seen["real_train"] == 8 and res["families"]["pair"]["status"] == "ok"
    assert res["metrics"]["pair_score"]["family"] == "pair" and res["records"] == {"pair": {"verdict": "fine"}}
    assert res["files"] == {"pair.csv": "a,b\n1,2\n"} and list(res["examples"]) == ["pair_images"]
    assert res["metrics"]["mean_diff"]["null_sd"] is not None  # the stand-in resampled family ran beside it

    # the report: registered families in registry order (here `pair` registered last), then stand-ins, then
    # the sections a stage adds, before "How to read this"
    diag = {"metrics": res["metrics"], "families": res["families"], "severity": res["severity"], **res["records"]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "BY_NAME", {**report.BY_NAME, "pair": pair})
        mp.setattr(report, "NAMES", (*report.NAMES, "pair"))
        figures, html = report.render(diag, {}, res["examples"], [Section("Extra", "<p>added</p>")])
    assert figures["pair_fig"] == b"png" and "<h2>14. Pairing</h2><p>fine: ['pair_score']</p>" in html
    order = [html.index(h) for h in ("<h2>14. Pairing", "<h2>mean_diff", "<h2>Extra", "<h2>How to read this")]
    assert order == sorted(order)
