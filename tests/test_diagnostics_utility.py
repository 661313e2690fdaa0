"""Utility (downstream segmentation): known answers on the demo phantom's slices, exact scoring, determinism.

The phantom's own lesions are too few (24 slices in the fixture) and too faint for a segmenter that
trains in a second, so the known-answer tests paint conspicuous disc lesions into the phantom's brain
slices (downsampled to 32 px). The known answers compare arms trained the same way, so they do not
depend on how hard the lesions are to find.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import paint_lesions

from jsddpm.config import load_config
from jsddpm.diagnostics import utility
from jsddpm.diagnostics.sets import ImageSet

FAST = ["diagnostics.utility_seeds=1", "diagnostics.utility_steps=150", "diagnostics.utility_batch_size=16",
        "diagnostics.utility_eval_every=10", "diagnostics.utility_patience=4", "diagnostics.utility_workers=1"]


def _cfg(*extra):
    return load_config(None, FAST + list(extra)).diagnostics


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
    images, masks = paint_lesions(small, rng)
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


def test_another_real_split_scores_like_the_real_arm(phantom_parts, reference_result):
    train, reference, _ = phantom_parts
    real, synth = reference_result["arms"]["real"], reference_result["arms"]["synthetic"]
    val = reference_result["validation"]
    assert synth["n_synthetic"] == len(reference)  # the synthetic arm trains on all synthetic slices
    assert real["n_real"] == val["n_fit_slices"] == len(train) - val["n_slices"] and val["n_lesion_slices"] > 0
    assert real["dice"]["value"] > 0.2  # the real arm learnt to find lesions
    assert real["max_steps"] == 150 and synth["max_steps"] == utility.arm_step_caps(
        {"real": real["n_lesion_slices"], "synthetic": synth["n_lesion_slices"]}, 150, 10)["synthetic"]
    assert real["dice"]["ci_low"] <= synth["dice"]["value"] <= real["dice"]["ci_high"]
    assert "Dice" in reference_result["verdict"] and "no lesions" not in reference_result["verdict"]
    for arm in ("real", "synthetic"):
        rec = reference_result["arms"][arm]
        assert len(rec["steps"]) == 3 and all(10 <= s <= rec["max_steps"] for s in rec["steps"])
        assert all(b <= s for b, s in zip(rec["best_steps"], rec["steps"])) and isinstance(rec["converged"], bool)
        for m in utility.METRICS:
            assert len(rec[m]["seeds"]) == 3 and rec[m]["ci_low"] <= rec[m]["value"] <= rec[m]["ci_high"]


def _synthetic_only(phantom_parts, images, masks, *extra):
    train, _, test = phantom_parts
    synth = ImageSet(images, masks, None, None, None, {"path": "synthetic"})
    return utility.run_utility(train, synth, test, _cfg(*extra), arms=("synthetic",))


@pytest.mark.parametrize("corruption", ["shifted", "shuffled"])
def test_misaligned_masks_collapse_the_synthetic_arm(phantom_parts, reference_result, corruption, one_thread):
    _, reference, _ = phantom_parts
    if corruption == "shifted":  # 6 px down and right: the masks no longer cover the lesions
        masks = np.roll(reference.masks, (6, 6), axis=(1, 2))
    else:  # lesion masks handed to other slices (a cyclic shift of the order, so no slice keeps its own)
        masks = np.roll(reference.masks, 1, axis=0)
    # 3 seeds: shuffled masks still teach disc shapes, and the checkpoint chosen by real validation Dice
    # keeps some of that (one seed gave 0.18 or 0.32 of 0.56 with a cosine span of 150 or 180 steps; the
    # mean of three 0.26, where aligned pairs give 0.51)
    res = _synthetic_only(phantom_parts, reference.images, masks, "diagnostics.utility_seeds=3")
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


def test_crossed_interval_covers_by_simulation():
    """Per-subject Dice = truth + subject effect + seed effect + noise, 4 test subjects x 3 seeds (the demo's
    design) and 8 x 3: the nominal 95% interval covers the truth at least 90% of the time, and is not
    uselessly wide (it misses sometimes)."""
    rng = np.random.default_rng(0)
    for n_units, n_seeds, sd_subject, sd_seed, sd_noise in [(4, 3, 0.10, 0.05, 0.05), (4, 3, 0.15, 0.0, 0.05),
                                                             (4, 3, 0.0, 0.10, 0.05), (8, 3, 0.10, 0.05, 0.10)]:
        hits = 0
        for _ in range(800):
            subject, seed = rng.standard_normal(n_units)[None], rng.standard_normal(n_seeds)[:, None]
            cells = 0.4 + sd_subject * subject + sd_seed * seed + sd_noise * rng.standard_normal((n_seeds, n_units))
            ci = utility.crossed_interval(cells)
            hits += ci["ci_low"] <= 0.4 <= ci["ci_high"]
        assert 0.90 <= hits / 800 < 0.995, (n_units, n_seeds, hits / 800)


def test_pooled_dice_interval_covers_by_simulation():
    """Pooled Dice (a ratio of sums) through `metric_cells`' pseudo-values: subjects with lesion sizes
    spread over two orders of magnitude, detection rates with subject and seed effects, false positives
    in proportion; the truth is the population's ratio of expected sums."""
    rng = np.random.default_rng(1)

    def draw(n_seeds, n_units):
        true = rng.lognormal(4, 1, n_units)[None] * np.ones((n_seeds, 1))
        rate = np.clip(0.5 + rng.normal(0, 0.12, n_units)[None] + rng.normal(0, 0.06, (n_seeds, 1))
                       + rng.normal(0, 0.05, (n_seeds, n_units)), 0, 1)
        sums = np.zeros((n_seeds, n_units, len(utility.SUM_COLUMNS)))
        sums[..., 0] = rate * true  # TP
        sums[..., 1] = rate * true + np.exp(rng.normal(-1, 0.5, (n_seeds, n_units))) * true  # predicted
        sums[..., 2], sums[..., 7] = true, 1.0
        return sums

    big = draw(200, 4000)
    truth = 2 * big[..., 0].sum() / (big[..., 1].sum() + big[..., 2].sum())
    hits = 0
    for _ in range(800):
        sums = draw(3, 4)
        cells = utility.metric_cells(sums, "dice")
        ci = utility.crossed_interval(cells)
        per_seed = [2 * s[:, 0].sum() / (s[:, 1].sum() + s[:, 2].sum()) for s in sums]
        assert ci["value"] == pytest.approx(np.mean(per_seed))  # the cells average to the seed mean
        hits += ci["ci_low"] <= truth <= ci["ci_high"]
    assert hits / 800 >= 0.90


def test_arms_use_all_synthetic_slices_and_stratified_fractions_and_a_ratio_sweep():
    cfg = _cfg("diagnostics.utility_real_fractions=[0.25]", "diagnostics.utility_synthetic_ratios=[0.5,1,2]")
    subject = np.repeat(np.arange(40), 10)
    has_lesion = np.zeros(400, bool)
    has_lesion[(np.arange(0, 20) * 10) + 3] = True  # subjects 0..19 hold lesions
    fit = np.flatnonzero(subject >= 4)  # subjects 0..3 carved out for validation
    arms = utility.arm_training_sets(fit, subject, has_lesion, 500, cfg, np.random.default_rng(0))
    assert list(arms) == ["real", "synthetic", "real_plus_synthetic", "real_plus_synthetic_x0.5",
                          "real_plus_synthetic_x2", "real_25pct", "real_25pct_plus_synthetic",
                          "real_25pct_plus_synthetic_x0.5", "real_25pct_plus_synthetic_x2"]
    assert len(arms["synthetic"][1]) == 500 and len(arms["synthetic"][0]) == 0
    assert len(arms["real_plus_synthetic"][1]) == 360 and len(arms["real_plus_synthetic_x0.5"][1]) == 180
    assert len(arms["real_plus_synthetic_x2"][1]) == 500  # capped at the synthetic slices there are
    real25 = arms["real_25pct"][0]
    kept = np.unique(subject[real25])
    assert len(kept) == 4 + 5 and (kept < 20).sum() == 4  # 25% of the 16 lesion and of the 20 lesion-free subjects
    assert set(real25) <= set(fit)
    assert len(arms["real_25pct_plus_synthetic"][1]) == len(real25)
    assert set(arms["real_25pct_plus_synthetic"][1]) <= set(arms["real_plus_synthetic"][1])  # a prefix of one order
    other = utility.arm_training_sets(fit, subject, has_lesion, 37, cfg, np.random.default_rng(0))
    assert np.array_equal(other["real_25pct"][0], real25)  # the real subset does not depend on the synthetic set
    pairs = utility._difference_pairs(arms)
    assert ("real_25pct_plus_synthetic_x2", "real_25pct") in pairs and ("synthetic", "real") in pairs


def test_step_caps_grow_with_an_arms_lesion_slices(phantom_parts, one_thread):
    """Each step draws the same share of lesion slices, so an arm with k times the real arm's lesion
    slices gets k times the cap (whole evaluation intervals, between 1x and MAX_CAP_SCALE x); the record
    holds each arm's cap and no segmenter passes it."""
    caps = utility.arm_step_caps({"real": 124, "synthetic": 200, "real_plus_synthetic": 324,
                                  "real_25pct": 30, "huge": 10_000}, 600, 25)
    assert caps == {"real": 600, "synthetic": 975, "real_plus_synthetic": 1575, "real_25pct": 600,
                    "huge": int(600 * utility.MAX_CAP_SCALE)}
    train, reference, test = phantom_parts
    lesions = reference.masks.any(axis=(1, 2))
    synth = reference.take(np.concatenate([np.flatnonzero(lesions), np.flatnonzero(~lesions)[:5]]))
    cfg = _cfg("diagnostics.utility_steps=40", "diagnostics.utility_patience=0")  # every segmenter runs to its cap
    result = utility.run_utility(train, synth, test, cfg, arms=("real", "real_plus_synthetic"))
    arms = result["arms"]
    n_real = int(train.masks.any(axis=(1, 2)).sum()) - result["validation"]["n_lesion_slices"]
    assert arms["real"]["n_lesion_slices"] == n_real and arms["real"]["max_steps"] == 40
    assert arms["real_plus_synthetic"]["n_lesion_slices"] == n_real + int(lesions.sum())
    expected = utility.arm_step_caps({"real": n_real, "x": n_real + int(lesions.sum())}, 40, 10)["x"]
    assert arms["real_plus_synthetic"]["max_steps"] == expected > 40
    assert all(arms[a]["steps"] == [arms[a]["max_steps"]] for a in arms)  # the cap reaches the training


def test_a_matching_reference_segmenter_is_the_real_arms_first_seed(phantom_parts, one_thread):
    """The reference segmenter trained as the real arm's first seed replaces that training, with the same
    numbers; one trained for other settings is not used."""
    from jsddpm.segmentation import settings_from_config, train_reference

    train, reference, test = phantom_parts
    cfg = _cfg("diagnostics.utility_steps=30")
    ref = train_reference(train.images, train.masks, train.subject, settings_from_config(cfg), int(cfg.seed))
    plain = utility.run_utility(train, reference, test, cfg, arms=("real",))
    reused = utility.run_utility(train, reference, test, cfg, arms=("real",), reference=ref)
    assert reused["settings"]["reference_reused"] and not plain["settings"]["reference_reused"]
    assert reused["arms"] == plain["arms"]
    other = utility.run_utility(train, reference, test, _cfg("diagnostics.utility_steps=31"), arms=("real",),
                                reference=ref)
    assert not other["settings"]["reference_reused"]


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


@pytest.mark.parametrize("override, needle", [
    ("diagnostics.utility_synthetic_ratios=[0.5,0]", "utility_synthetic_ratios must hold distinct ratios > 0"),
    ("diagnostics.utility_synthetic_ratios=[2,2]", "utility_synthetic_ratios must hold distinct ratios > 0"),
    ("diagnostics.utility_eval_every=0", "utility_eval_every must be >= 1"),
    ("diagnostics.utility_patience=-1", "utility_patience >= 0"),
    ("diagnostics.utility_val_fraction=1", "utility_val_fraction must be in \\[0, 1\\)"),
    ("diagnostics.utility_real_fractions=[1.0]", "utility_real_fractions must hold fractions in \\(0, 1\\)"),
])
def test_utility_keys_are_validated(override, needle):
    from jsddpm.errors import UserError

    with pytest.raises(UserError, match=needle):
        load_config(None, [override])
    ok = load_config("demo_cpu", ["diagnostics.utility_synthetic_ratios=[0.5,1,2]", "diagnostics.utility_patience=0"])
    assert list(ok.diagnostics.utility_real_fractions) == [0.25]  # the demo's data-scarce arms
    assert list(ok.diagnostics.utility_synthetic_ratios) == [0.5, 1, 2]


def test_cli_utility_and_run_all_family_write_outputs_and_a_criteria_row(demo_cache, tmp_path, capsys, one_thread):
    import csv
    import json

    from jsddpm.cli import main
    from jsddpm.data.cache import load_cache
    from jsddpm.diagnostics import aggregate
    from jsddpm.diagnostics.families import load_families

    def wants_utility(dcfg):  # run-all runs utility like any family: unless skipped or left out by --only
        return "utility" in [f.name for f in load_families(dcfg.only, dcfg.skip)]

    tiny = ["diagnostics.utility_steps=4", "diagnostics.utility_eval_every=2", "diagnostics.utility_seeds=1",
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


def test_sigterm_stops_the_utility_workers_at_once(demo_cache, tmp_path):
    """SIGTERM while worker processes train segmenters: exit 130 within seconds (the queued segmenters are
    not run first: ~14 x 5 s here), no worker left behind, no output folder."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "u"
    cmd = [sys.executable, "-m", "jsddpm.cli", "diagnose", "utility", "--real", str(demo_cache), "--synthetic",
           str(demo_cache), "--synthetic-split", "val", "--out", str(out), "diagnostics.utility_steps=200",
           "diagnostics.utility_patience=0", "diagnostics.utility_workers=2", "diagnostics.utility_seeds=5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)

    def group() -> list[str]:
        return subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()

    try:
        deadline = time.perf_counter() + 120
        while len(group()) < 3 and time.perf_counter() < deadline:  # the reference trains, then the workers
            time.sleep(0.5)
        assert len(group()) >= 3, "the utility workers never started"
        time.sleep(4)  # the spawned workers import torch and start training
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
        assert time.perf_counter() - t0 < 10
        deadline = time.perf_counter() + 10
        while group() and time.perf_counter() < deadline:
            time.sleep(0.5)
        left = [subprocess.run(["ps", "-o", "args=", "-p", p], capture_output=True, text=True).stdout for p in group()]
        assert left == []  # no worker left behind
        assert not out.exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
