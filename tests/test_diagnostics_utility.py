"""Utility (downstream segmentation): known answers on the demo phantom's slices, exact scoring, determinism.

The phantom's own lesions are too few (24 slices in the fixture) and too faint for a segmenter that
trains in a second, so the known-answer tests paint conspicuous disc lesions into the phantom's brain
slices (downsampled to 32 px). The known answers compare arms trained the same way, so they do not
depend on how hard the lesions are to find.
"""

from __future__ import annotations

import numpy as np
import pytest

from jsddpm.config import load_config
from jsddpm.diagnostics import utility
from jsddpm.diagnostics.sets import ImageSet

FAST = ["diagnostics.utility_seeds=1", "diagnostics.utility_steps=120", "diagnostics.utility_batch_size=16",
        "diagnostics.n_bootstrap=200", "diagnostics.utility_workers=1"]


def _cfg(*extra):
    return load_config(None, FAST + list(extra)).diagnostics


def _paint_lesions(images: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Half of the slices get one bright disc (radius 1.5-3 px) centred on a random brain pixel."""
    n, _, h, w = images.shape
    yy, xx = np.mgrid[:h, :w]
    out, masks = images.copy(), np.zeros((n, h, w), bool)
    for i in np.flatnonzero(rng.random(n) < 0.5):
        ys, xs = np.nonzero(images[i, 0] > -0.5)
        if not len(ys):
            continue
        j = rng.integers(len(ys))
        disc = (yy - ys[j]) ** 2 + (xx - xs[j]) ** 2 <= rng.uniform(1.5, 3.0) ** 2
        masks[i] = disc
        out[i, 0][disc] = np.minimum(out[i, 0][disc] + 0.6, 1.0)
    return out, masks


@pytest.fixture(scope="module")
def phantom_parts(demo_cache):
    """Three equal slice sets of the demo phantom with painted lesions: real training, a real reference
    (another real split of the same cohort) and the real test set. Slice-level, no subject ids."""
    import torch
    import torch.nn.functional as F

    from jsddpm.diagnostics.sets import load_set

    every = load_set(demo_cache, "real", "all")
    small = F.avg_pool2d(torch.from_numpy(every.images), 2).numpy()  # 64 -> 32 px
    rng = np.random.default_rng(0)
    images, masks = _paint_lesions(small, rng)
    order = rng.permutation(len(images))
    k = len(order) // 3
    return [ImageSet(images[np.sort(order[i * k:(i + 1) * k])], masks[np.sort(order[i * k:(i + 1) * k])],
                     None, None, None, {"path": f"part{i}"}) for i in range(3)]


@pytest.fixture(scope="module")
def reference_result(phantom_parts):
    """real and synthetic = another real split of equal size; 3 seeds per arm."""
    import torch

    torch.set_num_threads(1)
    train, reference, test = phantom_parts
    return utility.run_utility(train, reference, test, _cfg("diagnostics.utility_seeds=3"), arms=("real", "synthetic"))


def test_another_real_split_scores_like_the_real_arm(reference_result):
    real, synth = reference_result["arms"]["real"], reference_result["arms"]["synthetic"]
    assert synth["n_synthetic"] == real["n_real"]  # equal size at synthetic_ratio 1
    assert real["dice"]["value"] > 0.2  # the real arm learnt to find lesions
    assert real["dice"]["ci_low"] <= synth["dice"]["value"] <= real["dice"]["ci_high"]
    assert "Dice" in reference_result["verdict"] and "no lesions" not in reference_result["verdict"]
    for arm in ("real", "synthetic"):
        for m in utility.METRICS:
            rec = reference_result["arms"][arm][m]
            assert len(rec["seeds"]) == 3 and rec["ci_low"] <= rec["value"] <= rec["ci_high"]


def _synthetic_only(phantom_parts, images, masks):
    train, _, test = phantom_parts
    synth = ImageSet(images, masks, None, None, None, {"path": "synthetic"})
    return utility.run_utility(train, synth, test, _cfg(), arms=("synthetic",))


@pytest.mark.parametrize("corruption", ["shifted", "shuffled"])
def test_misaligned_masks_collapse_the_synthetic_arm(phantom_parts, reference_result, corruption, one_thread):
    _, reference, _ = phantom_parts
    if corruption == "shifted":  # 6 px down and right: the masks no longer cover the lesions
        masks = np.roll(reference.masks, (6, 6), axis=(1, 2))
    else:  # lesion masks handed to other slices (a cyclic shift of the order, so no slice keeps its own)
        masks = np.roll(reference.masks, 1, axis=0)
    res = _synthetic_only(phantom_parts, reference.images, masks)
    real_dice = reference_result["arms"]["real"]["dice"]["value"]
    assert res["arms"]["synthetic"]["dice"]["value"] < 0.5 * real_dice


def test_synthetic_set_without_lesions_scores_zero_and_says_so(phantom_parts, reference_result, one_thread):
    _, reference, _ = phantom_parts
    res = _synthetic_only(phantom_parts, reference.images, np.zeros_like(reference.masks))
    assert res["synthetic_has_lesions"] is False
    assert res["arms"]["synthetic"]["dice"]["value"] < 0.02
    assert "carries no lesions" in res["verdict"]


def test_identical_inputs_and_seeds_give_identical_numbers(phantom_parts, one_thread):
    """In one process, and in two worker processes: the numbers do not depend on where segmenters train."""
    train, reference, test = phantom_parts
    runs = []
    for workers in (1, 2):
        cfg = _cfg("diagnostics.utility_steps=10", "diagnostics.utility_seeds=2",
                   f"diagnostics.utility_workers={workers}")
        runs.append(utility.run_utility(train, reference, test, cfg, arms=("real", "synthetic")))
    a, b = runs
    assert a["arms"] == b["arms"] and a["differences"] == b["differences"]


def test_scores_match_hand_counts():
    """Two slices: a half-found lesion plus a false-positive blob; a lesion-free slice with one blob."""
    truth = np.zeros((2, 10, 10), bool)
    pred = np.zeros((2, 10, 10), bool)
    truth[0, 1:3, 1:3] = True  # lesion A, 4 px: found with 2 px
    pred[0, 1:3, 1] = True
    truth[0, 6:8, 6:8] = True  # lesion B, 4 px: missed
    pred[0, 4, 8] = True  # a false-positive component in slice 0
    pred[1, 5:7, 5:7] = True  # a false-positive component in slice 1 (no lesions there)
    counts = utility.slice_counts(pred, truth)
    sums = utility.unit_sums(counts, np.array([0, 1]))
    m = utility.metrics_from_sums(sums[None], np.ones((1, 2)))
    # Dice over lesion slices only: slice 0 has TP 2, predicted 3, true 8
    assert m["dice"][0, 0] == pytest.approx(2 * 2 / (3 + 8))
    assert m["sensitivity"][0, 0] == pytest.approx(0.5)
    assert m["fp_per_slice"][0, 0] == pytest.approx(2 / 2)
    assert m["subject_dice"][0, 0] == pytest.approx(4 / 11)  # one unit with lesions
    # a resample that draws slice 1 twice and slice 0 never has no lesion: NaN Dice, not 0
    assert np.isnan(utility.metrics_from_sums(sums[None], np.array([[0.0, 2.0]]))["dice"][0, 0])


def test_bad_inputs_are_user_errors(phantom_parts):
    from jsddpm.errors import UserError

    train, reference, test = phantom_parts
    no_masks = ImageSet(reference.images, None, None, None, None, {"path": "images_only.npz"})
    with pytest.raises(UserError, match="images_only.npz.*no lesion masks"):
        utility.run_utility(train, no_masks, test, _cfg())
    with pytest.raises(UserError, match="unknown arm"):
        utility.run_utility(train, reference, test, _cfg(), arms=("realest",))
    with pytest.raises(UserError, match="utility_widths"):
        load_config(None, ["diagnostics.utility_widths=[6,12]"])


def test_cli_utility_and_run_all_family_write_outputs_and_a_criteria_row(demo_cache, tmp_path, capsys, one_thread):
    import csv
    import json

    from jsddpm.cli import main
    from jsddpm.data.cache import load_cache
    from jsddpm.diagnostics import aggregate
    from jsddpm.diagnostics.families import load_families

    def wants_utility(dcfg):  # run-all runs utility like any family: unless skipped or left out by --only
        return "utility" in [f.name for f in load_families(dcfg.only, dcfg.skip)]

    tiny = ["diagnostics.utility_steps=4", "diagnostics.utility_seeds=1", "diagnostics.n_bootstrap=20",
            "diagnostics.utility_workers=1"]
    cache = load_cache(demo_cache)
    idx = cache.indices("val")
    np.savez(tmp_path / "synth.npz", images=cache.joint(idx))  # image + mask channel
    # the standalone command refuses to train on the slices it scores
    assert main(["diagnose", "utility", "--real", str(demo_cache), "--synthetic", str(demo_cache),
                 "--out", str(tmp_path / "u0"), *tiny]) == 2
    assert "--synthetic-split" in capsys.readouterr().err
    assert main(["diagnose", "utility", "--real", str(demo_cache), "--synthetic", str(demo_cache),
                 "--synthetic-split", "val", "--out", str(tmp_path / "u1"), *tiny]) == 0
    util = json.loads((tmp_path / "u1" / "utility.json").read_text())
    assert util["synthetic_set"]["split"] == "val" and util["test_set"]["split"] == "test"
    assert set(util["arms"]) == {"real", "synthetic", "real_plus_synthetic"}
    assert {"value", "ci_low", "ci_high", "seeds"} <= set(util["arms"]["real"]["dice"])
    assert "Utility" in (tmp_path / "u1" / "report.html").read_text()

    out = tmp_path / "diag"
    assert main(["diagnose", "run-all", "--real", str(demo_cache), "--synthetic", str(tmp_path / "synth.npz"),
                 "--out", str(out), "--only", "utility", *tiny]) == 0
    diag = json.loads((out / "diagnostics.json").read_text())
    assert set(diag["families"]) == {"utility"} and diag["families"]["utility"]["status"] == "ok"
    assert diag["utility"]["train_set"]["split"] == "train"
    with open(out / "utility.csv") as f:
        assert len(list(csv.DictReader(f))) == (3 + 2) * len(utility.METRICS)  # arms and differences
    html = (out / "report.html").read_text()
    assert "13. Utility" in html and diag["utility"]["verdict"][:30] in html
    gain = diag["utility"]["differences"]["real_plus_synthetic - real"]["dice"]["value"]
    assert aggregate.metric_value(diag, "utility_dice_gain") == gain
    main(["diagnose", "criteria", "--baseline", str(out), "--candidate", str(out)])
    rows = json.loads((out / "criteria.json").read_text())["criteria"]
    assert [r["passed"] for r in rows if r["criterion"] == "real+synthetic Dice not below real"] == [gain >= 0]

    cfg = load_config(None, []).diagnostics
    assert wants_utility(cfg) and not wants_utility(load_config(None, ["diagnostics.skip=[utility]"]).diagnostics)
    assert not wants_utility(load_config(None, ["diagnostics.only=[spectral]"]).diagnostics)
