import json
import re

import pytest

from jsddpm.errors import UserError
from jsddpm.study import finish_study, grid_points, parse_grid, run_study


def test_parse_grid_types_values_and_rejects_bad_items():
    grid = parse_grid(["diffusion.prediction_type=epsilon,v", "loss.p=1.5,2"])
    assert grid == {"diffusion.prediction_type": ["epsilon", "v"], "loss.p": [1.5, 2]}
    assert len(grid_points(grid)) == 4
    for bad in (["loss.p"], ["loss.p=1,1"], ["loss.p=1", "loss.p=2"]):
        with pytest.raises(UserError):
            parse_grid(bad)


@pytest.mark.parametrize("item, message", [
    ("loss.p=2.0,2", "loss.p lists 2.0 and 2, the same value"),  # one training point, two folders
    ("loss.p=1e-3,0.001", "loss.p lists 1e-3 and 0.001, the same value"),
    ("loss.p=1.5,2.0,", "loss.p has an empty value (a trailing or doubled comma)"),
    ("loss.p=1.5,,2.0", "loss.p has an empty value"),
])
def test_parse_grid_compares_values_as_numbers_and_names_the_key_of_an_empty_value(item, message):
    with pytest.raises(UserError, match=re.escape(f"--grid '{item}': {message}")):
        parse_grid([item])


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


def _fake_diagnostics(folder, prediction_type, p, severity):
    folder.mkdir(parents=True)
    metrics = {"wavelet_hh_l1_ratio": {"value": 0.7}, "glcm_contrast_real": {"value": 80.0},
               "glcm_contrast_synth": {"value": 75.0}, "spectral_slope_diff": {"value": severity / 10}}
    (folder / "diagnostics.json").write_text(json.dumps({"metrics": metrics, "severity": {"severity": severity}}))
    (folder / "generator_config.yaml").write_text(
        f"diffusion:\n  prediction_type: {prediction_type}\nloss:\n  p: {p}\ntrain:\n  out_dir: {folder}\n")
    return folder


def test_finish_study_names_the_best_configuration_and_the_dominant_factor(tmp_path):
    dirs = []
    for pt, base in (("epsilon", 0.6), ("v", 0.4), ("sample", 0.2)):
        for p, bump in ((1.5, 0.0), (2.0, 0.01)):
            dirs.append(_fake_diagnostics(tmp_path / "points" / f"{pt}_{p}", pt, p, base + bump))
    study_md = finish_study(dirs, tmp_path, log=lambda s: None)
    text = study_md.read_text()
    assert "Lowest severity: **sample_1.5**" in text
    assert "the factor explaining most of the variance in severity is **diffusion.prediction_type**" in text
    assert "## Lp norm within the best prediction type (sample)" in text
    # rerunning after more points finished replaces the aggregate instead of failing on the existing folder
    finish_study(dirs[:4], tmp_path, log=lambda s: None)
    assert "Lowest severity: **v_1.5**" in study_md.read_text()
