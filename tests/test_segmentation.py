"""The shared lesion segmenter (segmentation/): scoring by hand, the validation carve, early stopping, the
stored reference segmenter (round trip, retraining on a changed cache or settings) and a known answer:
trained on agreeing image + mask pairs it finds their lesions far better than chance."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from jsddpm import segmentation as seg
from jsddpm.config import load_config

TINY = ["diagnostics.utility_steps=6", "diagnostics.utility_eval_every=2", "diagnostics.utility_patience=2",
        "diagnostics.utility_widths=[4,8]"]


def _disc_pairs(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random backgrounds in [-1, 0.2]; two thirds of the slices get one bright disc (radius 2-3 px)."""
    from scipy import ndimage

    back = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), (0, 3, 3))
    back = -0.4 + 0.6 * back / np.abs(back).max()
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), bool)
    for i in np.flatnonzero(rng.random(n) < 2 / 3):
        cy, cx = rng.integers(4, size - 4, size=2)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(2.0, 3.0) ** 2
    images = np.where(masks, np.minimum(back + 0.7, 1.0), back).astype(np.float32)[:, None]
    return images, masks


def test_pair_dice_and_pooled_dice_match_hand_counts():
    pred, truth = np.zeros((3, 4, 4), bool), np.zeros((3, 4, 4), bool)
    truth[0, :2, :2] = True  # 4 true pixels, 2 of them predicted, plus 1 false-positive pixel
    pred[0, 0, :2] = True
    pred[0, 3, 3] = True
    pred[1, 0, 0] = True  # a lesion-free slice with a false positive: Dice 0
    # slice 2: both empty, they agree
    assert seg.pair_dice(pred, truth) == pytest.approx([2 * 2 / (3 + 4), 0.0, 1.0])
    assert seg.pooled_dice(pred, truth) == pytest.approx(2 * 2 / (3 + 4))  # lesion slices only


def test_scores_match_hand_counts():
    """Two slices: a half-found lesion plus a false-positive blob; a lesion-free slice with one blob."""
    truth = np.zeros((2, 10, 10), bool)
    pred = np.zeros((2, 10, 10), bool)
    truth[0, 1:3, 1:3] = True  # lesion A, 4 px: found with 2 px
    pred[0, 1:3, 1] = True
    truth[0, 6:8, 6:8] = True  # lesion B, 4 px: missed
    pred[0, 4, 8] = True  # a false-positive component in slice 0
    pred[1, 5:7, 5:7] = True  # a false-positive component in slice 1 (no lesions there)
    sums = seg.unit_sums(seg.slice_counts(pred, truth), np.array([0, 1]))
    m = seg.metrics_from_sums(sums)
    assert m["dice"] == pytest.approx(2 * 2 / (3 + 8))  # lesion slices only: TP 2, predicted 3, true 8
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["fp_per_slice"] == pytest.approx(2 / 2)
    assert m["subject_dice"] == pytest.approx(4 / 11)  # one unit with lesions


def test_validation_split_is_subject_disjoint_and_holds_lesions():
    rng = np.random.default_rng(0)
    subject = np.repeat([f"s{i}" for i in range(10)], 5)
    masks = np.zeros((50, 4, 4), bool)
    for s in range(6):  # subjects s0..s5 hold a lesion on one slice each
        masks[5 * s + 2, 1, 1] = True
    fit, val = seg.validation_split(masks, subject, 0.5, rng)
    assert sorted(np.concatenate([fit, val])) == list(range(50))
    val_subjects = set(subject[val])
    assert len(val_subjects) == 3 and not val_subjects & set(subject[fit])
    assert val_subjects <= {f"s{i}" for i in range(6)}  # lesion-free subjects stay in training
    assert masks[fit].any() and masks[val].any()
    # without subject ids each slice is a unit; with fewer than two lesion units there is nothing to carve
    fit, val = seg.validation_split(masks, None, 0.5, rng)
    assert len(val) == 3 and masks[val].any(axis=(1, 2)).all()
    one = np.zeros_like(masks)
    one[0, 0, 0] = True
    assert len(seg.validation_split(one, subject, 0.5, rng)[1]) == 0


def test_early_stopping_stops_keeps_the_best_weights_and_records_it(one_thread):
    rng = np.random.default_rng(1)
    images, masks = _disc_pairs(48, 16, rng)
    settings = seg.SegmenterSettings(widths=(4, 8), max_steps=400, batch_size=8, eval_every=5, patience=3)
    net, rec = seg.train_segmenter(images[:32], masks[:32], settings, 0, images[32:], masks[32:])
    assert rec["converged"] is True and rec["steps"] < 400
    # halted at the first evaluation that met every condition: `patience` evaluations after the best, not
    # before half the step cap, with a curve no longer rising
    def may_halt(k):
        step, best_step = rec["curve"][k][0], max(rec["curve"][:k + 1], key=lambda c: c[1])[0]
        return step >= max(best_step + 3 * 5, 200) and not seg.still_rising(rec["curve"][:k + 1], 3)

    halts = [k for k in range(len(rec["curve"])) if may_halt(k)]
    assert halts and rec["curve"][halts[0]][0] == rec["steps"] >= max(rec["best_step"] + 3 * 5, 200)
    assert max(d for _, d in rec["curve"]) == rec["val_dice"]
    # the returned weights are the best ones: they reproduce the best validation Dice
    assert seg.pooled_dice(seg.predict_masks(net, images[32:]), masks[32:]) == pytest.approx(rec["val_dice"])
    # patience 0: the whole budget, the best validation checkpoint kept
    capped = seg.SegmenterSettings(widths=(4, 8), max_steps=40, batch_size=8, eval_every=5, patience=0)
    net, rec = seg.train_segmenter(images[:32], masks[:32], capped, 0, images[32:], masks[32:])
    assert rec["steps"] == 40 and len(rec["curve"]) == 8 and isinstance(rec["converged"], bool)
    assert seg.pooled_dice(seg.predict_masks(net, images[32:]), masks[32:]) == pytest.approx(rec["val_dice"])
    # no validation slices: a fixed budget, the last weights
    _, rec = seg.train_segmenter(images[:32], masks[:32], capped, 0)
    assert rec["steps"] == 40 and rec["converged"] is None and rec["curve"] == [] and rec["val_dice"] is None

def test_still_rising_compares_the_last_half_patience_window_with_the_one_before():
    dice = [0.0, 0.17, 0.06, 0.04, 0.05, 0.08, 0.1, 0.09, 0.07, 0.13]  # the demo's spike, dip and slow climb
    spike_then_climb = [(25 * i, d) for i, d in enumerate(dice, 1)]
    assert seg.still_rising(spike_then_climb, 8)  # mean 0.0975 of the last 4 above 0.0575 of the 4 before
    plateau = spike_then_climb + [(275, 0.2), (300, 0.19), (325, 0.2), (350, 0.18), (375, 0.19), (400, 0.2),
                                  (425, 0.18), (450, 0.19)]
    assert not seg.still_rising(plateau, 8)
    assert seg.still_rising(plateau[:5], 8)  # too few evaluations to tell: still rising
    assert not seg.still_rising([(1, 0.3), (2, 0.3)], 1)  # patience 1 compares single evaluations


def test_trained_on_agreeing_pairs_it_beats_chance(one_thread):
    """Known answer: on held-out pairs its masks agree with the true ones far better than with the masks
    of other slices (the chance baseline of a segmenter that predicts lesion-like blobs anywhere)."""
    rng = np.random.default_rng(2)
    images, masks = _disc_pairs(160, 24, rng)
    settings = seg.SegmenterSettings(widths=(8, 16), max_steps=300, batch_size=16, crop=1.0, eval_every=20,
                                     patience=4)
    net, _ = seg.train_segmenter(images[:100], masks[:100], settings, 0, images[100:130], masks[100:130])
    test_images, test_masks = images[130:], masks[130:]
    pred = seg.predict_masks(net, test_images)
    lesion = test_masks.any(axis=(1, 2))
    agree = seg.pair_dice(pred, test_masks)[lesion].mean()
    shuffled = np.roll(test_masks[lesion], 1, axis=0)  # every lesion slice paired with another one's mask
    chance = seg.pair_dice(pred[lesion], shuffled).mean()
    assert agree > 0.5 and agree > chance + 0.4


@pytest.fixture
def cache_copy(demo_cache, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(demo_cache, out)
    return out


def test_reference_segmenter_round_trip_and_retraining(cache_copy, tmp_path, one_thread, monkeypatch):
    from jsddpm.data.cache import load_cache
    from jsddpm.segmentation import reference

    cfg = load_config(None, TINY)
    store = tmp_path / "segmenters"
    first = seg.reference_segmenter(cache_copy, cfg, store)
    info = first.info
    assert info["source"] == "trained" and info["cache_fingerprint"] == load_cache(cache_copy).fingerprint
    files = list(store.glob("segmenter-*.pt"))
    assert [p.name for p in files] == [f"segmenter-{info['key']}.pt"]
    test = load_cache(cache_copy)
    images = np.asarray(test.images[test.indices("test")], dtype=np.float32)
    pred = first.predict(images)
    assert pred.shape == (len(images), *images.shape[2:]) and pred.dtype == bool

    with monkeypatch.context() as m:  # the second call loads: it must not train
        m.setattr(reference, "train_reference", lambda *a, **k: pytest.fail("trained again"))
        again = seg.reference_segmenter(cache_copy, cfg.diagnostics, store)  # the section works as well
    info2 = again.info
    assert info2["source"] == "loaded" and info2["key"] == info["key"]
    assert info2["training"] == info["training"] and info2["settings"] == info["settings"]
    assert np.array_equal(again.predict(images), pred)
    assert np.array_equal(seg.load_segmenter(files[0]).predict(images), pred)

    # other settings: another file, trained
    other = seg.reference_segmenter(cache_copy, load_config(None, TINY + ["diagnostics.utility_lr=1e-3"]), store).info
    assert other["source"] == "trained" and other["key"] != info["key"]
    # another cache content (its index edited): another fingerprint, trained again
    stats = json.loads((cache_copy / "stats.json").read_text())
    stats["note"] = "edited"
    (cache_copy / "stats.json").write_text(json.dumps(stats))
    edited = seg.reference_segmenter(cache_copy, cfg, store).info
    assert edited["source"] == "trained" and edited["cache_fingerprint"] != info["cache_fingerprint"]
    assert len(list(store.glob("segmenter-*.pt"))) == 3 and not list(store.glob(".*tmp*"))


def test_a_damaged_segmenter_file_is_a_user_error(tmp_path):
    from jsddpm.errors import UserError

    bad = tmp_path / "segmenter-0.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="segmenter-0.pt: cannot read the stored segmenter"):
        seg.load_segmenter(bad)
