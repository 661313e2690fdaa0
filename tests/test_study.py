import json

import pytest

from jsddpm.errors import UserError
from jsddpm.study import grid_points, parse_grid, run_study, study_tables, variance_share


def test_parse_grid_types_values_and_rejects_bad_items():
    grid = parse_grid(["diffusion.prediction_type=epsilon,v", "loss.p=1.5,2"])
    assert grid == {"diffusion.prediction_type": ["epsilon", "v"], "loss.p": [1.5, 2]}
    assert len(grid_points(grid)) == 4
    for bad in (["loss.p"], ["loss.p=1,1"], ["loss.p=1", "loss.p=2"]):
        with pytest.raises(UserError):
            parse_grid(bad)


def test_study_resumes_after_a_crash_and_skips_finished_points(tmp_path):
    grid = parse_grid(["diffusion.prediction_type=epsilon,sample", "loss.p=1.5,2.0"])
    calls = []

    def crashing_after_two(overrides, point_dir):
        if len(calls) == 2:
            raise RuntimeError("node died")
        calls.append(overrides)
        (point_dir / "diag").mkdir(exist_ok=True)
        return point_dir / "diag"

    with pytest.raises(RuntimeError):
        run_study(["train.max_steps=3"], grid, tmp_path, crashing_after_two, log=lambda s: None)
    assert len(calls) == 2

    again = []

    def recording(overrides, point_dir):
        again.append(overrides)
        (point_dir / "diag").mkdir(exist_ok=True)
        return point_dir / "diag"

    dirs = run_study(["train.max_steps=3"], grid, tmp_path, recording, log=lambda s: None)
    assert len(dirs) == 4 and all(d.is_dir() for d in dirs)
    # only the two unfinished points ran, each with the base overrides then its own values
    assert again == [
        ["train.max_steps=3", "diffusion.prediction_type=sample", "loss.p=1.5"],
        ["train.max_steps=3", "diffusion.prediction_type=sample", "loss.p=2.0"],
    ]
    assert run_study(["train.max_steps=3"], grid, tmp_path, recording, log=lambda s: None) == dirs
    assert len(again) == 2
    # a different grid in the same folder is refused instead of mixing results
    with pytest.raises(UserError, match="another config or grid"):
        run_study(["train.max_steps=4"], grid, tmp_path, recording, log=lambda s: None)
    assert json.loads((tmp_path / "study.json").read_text())["grid"]["loss.p"] == [1.5, 2.0]


def test_variance_share_is_one_for_the_only_factor_that_matters():
    rows = [{"a": a, "b": b, "severity": {"x": 0.1, "y": 0.5}[a]} for a in "xy" for b in (1, 2, 3)]
    shares = variance_share(rows, ["a", "b"])
    assert shares["a"] == pytest.approx(1.0) and shares["b"] == pytest.approx(0.0)
    # additive effects split the variance by their sums of squares
    rows = [{"a": a, "b": b, "severity": a + 2 * b} for a in (0, 1) for b in (0, 1)]
    shares = variance_share(rows, ["a", "b"])
    assert shares["a"] == pytest.approx(0.2) and shares["b"] == pytest.approx(0.8)


def test_study_tables_name_the_best_configuration_and_the_dominant_factor():
    rows = []
    for pt, base in (("epsilon", 0.6), ("v", 0.4), ("sample", 0.2)):
        for p, bump in ((1.5, 0.0), (2.0, 0.01)):
            rows.append({"diffusion.prediction_type": pt, "loss.p": p, "severity": base + bump,
                         "wavelet_hh_l1_ratio": 0.7, "glcm_contrast_real": 80.0, "glcm_contrast_synth": 75.0})
    md, summary = study_tables(rows, ["diffusion.prediction_type", "loss.p"])
    assert summary["best"] == {"diffusion.prediction_type": "sample", "loss.p": 1.5}
    assert summary["best_prediction_type"] == "sample"
    assert summary["dominant_factor"] == "diffusion.prediction_type"
    assert "| Severity | 0.605 | 0.205 | 0.405 | 0 |" in md  # columns sorted: epsilon, sample, v
    assert "| GLCM contrast | 75 | 75 | 80 |" in md
