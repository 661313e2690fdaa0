"""Pairing (does the image agree with its mask): the lesion-contrast maths by hand, and known answers with one
small reference segmenter trained on real-like slices (the demo phantom's brains with painted disc lesions,
as in the utility tests: the phantom's own lesions are too few and faint for a segmenter that trains in
seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import paint_lesions
from scipy import ndimage

from jsddpm.config import load_config
from jsddpm.diagnostics import pairing
from jsddpm.diagnostics import severity as sev
from jsddpm.diagnostics.families import BY_NAME
from jsddpm.diagnostics.regions import IN_PLANE_8
from jsddpm.diagnostics.runner import run_diagnostics
from jsddpm.diagnostics.sets import ImageSet

FAST = ["diagnostics.utility_steps=150", "diagnostics.utility_batch_size=16", "diagnostics.utility_eval_every=10",
        "diagnostics.utility_patience=4", "diagnostics.utility_widths=[8,16]", "diagnostics.n_bootstrap=40",
        "diagnostics.n_null_repeats=30"]
TINY = ["diagnostics.utility_steps=6", "diagnostics.utility_eval_every=2", "diagnostics.utility_widths=[4,8]",
        "diagnostics.n_bootstrap=4", "diagnostics.n_null_repeats=4"]
PAIRING_COMPONENTS = [n for n, c in sev.SEVERITY_COMPONENTS.items() if c.group == "pairing" and n.startswith(
    ("pairing", "lesion_contrast"))]


def _cfg(*extra):
    return load_config(None, FAST + list(extra)).diagnostics


# ------------------------------------------------------------------------------- contrast maths
def test_lesion_contrast_is_inside_minus_ring_in_brain_sd_units():
    """Hand-made slice: brain (value 0, a textured corner for its SD) on a -1 background; lesion A (0.5) in
    the middle, lesion B (1.0) 3 px from it, lesion C (0.8) on the brain's edge. Rings hold only brain
    pixels at 2-4 px: B's pixels never enter A's ring, the background never enters C's."""
    img = np.full((40, 40), -1.0)
    img[4:36, 4:36] = 0.0
    img[6:12, 6:12] = np.where(np.add.outer(np.arange(6), np.arange(6)) % 2, 0.3, -0.3)  # texture: the brain SD
    mask = np.zeros((40, 40), bool)
    mask[19:22, 19:22] = True  # A
    mask[19:22, 25:27] = True  # B: 3 px right of A (gap of 3 columns)
    mask[30:36, 20:22] = True  # C: touches the brain's lower edge
    img[19:22, 19:22], img[19:22, 25:27], img[30:36, 20:22] = 0.5, 1.0, 0.8
    cfg = load_config(None, ["diagnostics.roi_min_component=0"]).diagnostics
    res = pairing.lesion_contrast(img[None, None], mask[None], cfg)
    brain = (img > -0.9) & ~mask
    sd = img[brain].std(ddof=1)
    labels = ndimage.label(mask[None], structure=IN_PLANE_8)[0][0]
    got = dict(zip(res["label"].tolist(), res["contrast"]))
    # A's ring (2-4 px) holds brain pixels at 0 only: B's pixels are lesion, the ring pixels nearer B are B's
    assert got[labels[20, 20]] == pytest.approx(0.5 / sd)
    assert got[labels[20, 25]] == pytest.approx(1.0 / sd)
    assert got[labels[32, 20]] == pytest.approx(0.8 / sd)  # the background below the brain is left out
    assert np.array_equal(res["owner"], [0, 0, 0]) and sorted(res["area"]) == [6, 9, 12]
    # halving every lesion's excess over its ring halves the contrast; a set without lesions has none
    f_real = pairing.features(img[None, None], mask[None], cfg)
    f_half = pairing.features(np.where(mask, img / 2, img)[None, None], mask[None], cfg)
    m = pairing.compare(f_real, f_half, cfg)
    assert m["lesion_contrast_ratio"]["value"] == pytest.approx(0.5) and "pairing_dice" not in m
    assert len(pairing.lesion_contrast(img[None, None], np.zeros((1, 40, 40), bool), cfg)["contrast"]) == 0


# ------------------------------------------------------------------------- a trained segmenter
@pytest.fixture(scope="module")
def parts(demo_cache):
    """Three slice sets of the demo phantom at 32 px with painted lesions: the segmenter's training set,
    the real held-out set and another real set (the 'synthetic' side)."""
    import torch
    import torch.nn.functional as F

    from jsddpm.diagnostics.sets import load_set

    every = load_set(demo_cache, "real", "all")
    small = F.avg_pool2d(torch.from_numpy(every.images), 2).numpy()
    rng = np.random.default_rng(0)
    images, masks = paint_lesions(small, rng)
    order = rng.permutation(len(images))
    k = len(order) // 3
    return [ImageSet(images[np.sort(order[i * k:(i + 1) * k])], masks[np.sort(order[i * k:(i + 1) * k])],
                     source={"path": f"part{i}"}) for i in range(3)]


@pytest.fixture(scope="module")
def segmenter(parts):
    """One reference segmenter for the module, trained as `segmentation.reference_segmenter` trains it."""
    import torch

    from jsddpm.segmentation import settings_from_config, train_reference

    torch.set_num_threads(1)
    train = parts[0]
    return train_reference(train.images, train.masks, None, settings_from_config(_cfg()), 0)


def _run(parts, segmenter, synth: ImageSet, *families):
    train, real, _ = parts
    fams = [BY_NAME[f] for f in ("pairing", *families)]
    return run_diagnostics(real, synth, _cfg(), families=fams, progress=None, strict=True,
                           real_train=lambda: train, segmenter=lambda: segmenter)


def _z(rec):
    return abs(rec["value"] - rec["null_mean"]) / rec["null_sd"]


def _halved(s: ImageSet, cfg) -> ImageSet:
    """The same pairs with every lesion's excess over its 2-4 px ring halved (correct masks, faint lesions)."""
    lc = pairing.lesion_contrast(s.images, s.masks, cfg)
    labels = ndimage.label(s.masks, structure=IN_PLANE_8)[0]
    surround = np.zeros(labels.max() + 1)
    surround[lc["label"]] = lc["surround"]
    img = s.images.copy()
    inside = labels > 0
    img[:, 0][inside] = surround[labels[inside]] + (img[:, 0][inside] - surround[labels[inside]]) / 2
    return ImageSet(img, s.masks.copy(), source={"path": "halved"})


@pytest.mark.usefixtures("one_thread")
def test_real_pairs_as_synthetic_score_like_real(parts, segmenter):
    _, real, other = parts
    res = _run(parts, segmenter, other)
    m = res["metrics"]
    assert res["families"]["pairing"]["status"] == "ok"
    assert m["pairing_dice_real"]["value"] > 0.5  # the segmenter finds the real lesions
    for name in ("pairing_dice_ratio", "lesion_contrast_ratio"):
        assert 0.8 < m[name]["value"] < 1.25 and _z(m[name]) < 3, (name, m[name])
        assert m[name]["ci_low"] < m[name]["value"] < m[name]["ci_high"]
        assert m[name]["null_mean"] == pytest.approx(1.0, abs=0.1)
    assert res["severity"]["groups"]["pairing"]["score"] < 0.1
    assert not set(PAIRING_COMPONENTS) & set(res["severity"]["missing"])
    # per-pair scores of every synthetic slice, as generation's filter reads them
    rows = list(csv.DictReader(res["files"]["pairing.csv"].splitlines()))
    assert len(rows) == len(other)
    fid = segmenter.predict(other.images)
    from jsddpm.segmentation import pair_dice

    assert np.allclose([float(r["fidelity"]) for r in rows], pair_dice(fid, other.masks))
    assert [int(r["lesion_area"]) for r in rows] == other.masks.sum(axis=(1, 2)).tolist()


@pytest.mark.usefixtures("one_thread")
def test_shifted_masks_collapse_the_pairing_dice_ratio(parts, segmenter):
    _, real, other = parts
    shifted = ImageSet(other.images, np.roll(other.masks, (5, 5), axis=(1, 2)), source={"path": "shifted"})
    m = _run(parts, segmenter, shifted)["metrics"]
    ratio = m["pairing_dice_ratio"]
    assert ratio["value"] < 0.2 and _z(ratio) > 3
    assert m["lesion_contrast_ratio"]["value"] < 0.5  # the mask no longer sits on the bright disc


@pytest.mark.usefixtures("one_thread")
def test_halved_contrast_under_correct_masks_halves_the_contrast_ratio_only(parts, segmenter):
    """Known answer of the issue: perfect masks on fainter lesions. The contrast ratio is 0.5 and the
    segmenter agrees less, while every mask-morphology metric is exactly that of the untouched pairs."""
    _, real, _ = parts
    cfg = _cfg()
    copy = ImageSet(real.images.copy(), real.masks.copy(), source={"path": "copy"})  # another set, same pairs
    same = _run(parts, segmenter, copy, "morphology")["metrics"]
    faint = _run(parts, segmenter, _halved(real, cfg), "morphology")
    m = faint["metrics"]
    assert m["lesion_contrast_ratio"]["value"] == pytest.approx(0.5, abs=1e-6)
    assert same["lesion_contrast_ratio"]["value"] == pytest.approx(1.0) and _z(m["lesion_contrast_ratio"]) > 3
    assert m["pairing_dice_ratio"]["value"] < same["pairing_dice_ratio"]["value"] - 0.2
    assert _z(m["pairing_dice_ratio"]) > 2
    for name, rec in m.items():
        if rec["family"] == "morphology":
            assert rec["value"] == same[name]["value"], name
    assert faint["severity"]["components"]["lesion_contrast_ratio"]["score"] > 0.5


@pytest.mark.usefixtures("one_thread")
def test_a_synthetic_set_without_lesions_is_a_maximal_pairing_deviation(parts, segmenter):
    _, _, other = parts
    res = _run(parts, segmenter, ImageSet(other.images, np.zeros_like(other.masks), source={"path": "none"}))
    m, comps = res["metrics"], res["severity"]["components"]
    assert m["pairing_dice_real"]["value"] > 0.5
    for name in PAIRING_COMPONENTS:
        assert m[name]["value"] is None and m[name]["absent_in_synthetic"] == "lesion pairs"
        assert comps[name]["score"] == 1.0
    assert res["records"]["pairing"]["n_pairs"]["synthetic"] == 0


# --------------------------------------------------------------------------- run-all end to end
def test_run_all_stores_the_segmenter_and_reuses_it(demo_cache, tmp_path, capsys, monkeypatch, one_thread):
    """run-all trains the reference segmenter into the cache's store (<cache>/segmenters/, where
    generation's fidelity filter looks too), writes pairing.csv and the report section; a later run finds
    the same file in `diagnostics.segmenter_dir` or in the synthetic set's generation folder, and does not
    train again."""
    import shutil

    from jsddpm.cli import main
    from jsddpm.data.cache import load_cache
    from jsddpm.segmentation import reference

    # its own store, empty: without the segmenters other tests' run-all stored in the shared cache
    demo_cache = Path(shutil.copytree(demo_cache, tmp_path / "cache", ignore=shutil.ignore_patterns("segmenters")))
    c = load_cache(demo_cache)
    idx = c.indices("val")
    gen = tmp_path / "gen"
    gen.mkdir()
    np.savez(gen / "samples.npz", images=c.joint(idx), zbin=c.index["zbin"][idx], label=c.index["label"][idx])
    first = tmp_path / "d1"
    assert main(["diagnose", "run-all", "--real", str(demo_cache), "--synthetic", str(gen), "--out", str(first),
                 "--only", "pairing", *TINY]) == 0
    diag = json.loads((first / "diagnostics.json").read_text())
    seg = diag["pairing"]["segmenter"]
    assert diag["families"]["pairing"]["status"] == "ok" and seg["source"] == "trained"
    stored = demo_cache / "segmenters" / f"segmenter-{seg['key']}.pt"
    assert not list(first.glob("segmenter-*.pt"))
    assert stored.is_file() and seg["path"] == str(stored)
    assert {"pairing_dice", "pairing_dice_real", "pairing_dice_ratio", "lesion_contrast_real",
            "lesion_contrast_synth", "lesion_contrast_ratio"} <= set(diag["metrics"])
    with open(first / "pairing.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(idx) and [int(r["zbin"]) for r in rows] == c.index["zbin"][idx].tolist()
    html = (first / "report.html").read_text()
    assert "14. Pairing" in html and (first / "figures" / "pairing.png").is_file()
    assert (first / "figures" / "pairing_worst.png").is_file()

    elsewhere = tmp_path / "segmenters"
    elsewhere.mkdir()
    stored = Path(shutil.move(stored, elsewhere / stored.name))  # the cache's store is empty again
    monkeypatch.setattr(reference, "train_reference", lambda *a, **k: pytest.fail("trained again"))
    assert main(["diagnose", "run-all", "--real", str(demo_cache), "--synthetic", str(gen), "--out",
                 str(tmp_path / "d2"), "--only", "pairing", *TINY, f"diagnostics.segmenter_dir={elsewhere}"]) == 0
    again = json.loads((tmp_path / "d2" / "diagnostics.json").read_text())
    assert again["pairing"]["segmenter"]["source"] == "loaded"
    assert again["metrics"]["pairing_dice"] == diag["metrics"]["pairing_dice"]
    assert not list((tmp_path / "d2").glob("segmenter-*.pt"))  # kept in segmenter_dir only
    shutil.copy(stored, gen / stored.name)  # generation's copy: used first, so both score with one network
    assert main(["diagnose", "run-all", "--real", str(demo_cache), "--synthetic", str(gen), "--out",
                 str(tmp_path / "d3"), "--only", "pairing", *TINY]) == 0
    third = json.loads((tmp_path / "d3" / "diagnostics.json").read_text())["pairing"]["segmenter"]
    assert third["source"] == "loaded" and third["path"] == str(gen / stored.name)
