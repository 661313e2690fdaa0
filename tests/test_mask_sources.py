"""`jsddpm generate --masks bank|generated|PATH` (a mask-conditioned checkpoint) and the fidelity filter
(sample.min_fidelity / sample.score_fidelity, generate and inpaint): where the masks come from, that they
are carried exactly, bad mask files, the two-stage `generated` source, and which pairs the filter keeps."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from conftest import write_random_checkpoint

from jsddpm.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY64 = ["data.image_size=64", "data.n_zbins=10", "model.base_channels=8", "model.channel_mult=[1,2]",
          "model.attention_resolutions=[]", "model.num_classes=2", "model.prior=concat", "diffusion.timesteps=50",
          "sample.steps=3", "sample.sampler=ddpm", "sample.device=cpu", "sample.batch_size=8",
          "model.mask_conditioning=true"]


@pytest.fixture(scope="module")
def cache(demo_cache):
    from jsddpm.data.cache import load_cache

    return load_cache(demo_cache)


@pytest.fixture(scope="module")
def ckpt(demo_cache, cache, tmp_path_factory):
    """A mask-conditioned checkpoint of the demo cache (its data.cache_dir and fingerprint recorded)."""
    from jsddpm.config import load_config

    cfg = load_config(None, [*TINY64, f"data.cache_dir={demo_cache}"])
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt", cfg, 0.1, cache.classes,
                                   cache.priors, cache.stats["spacing_mm"], cache_fingerprint=cache.fingerprint)


def load(folder) -> dict:
    with np.load(folder / "samples.npz") as f:
        return {k: f[k] for k in f.files}


def one_line_error(capsys, needle: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    return err[0]


# ---------------------------------------------------------------------------------------- bank
def test_bank_masks_come_only_from_training_subjects_and_are_carried_exactly(ckpt, cache, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text('{"count": 3, "zbins": [4, 7]}')  # no training lesion at z-bin 4 (the test split has some)
    out = tmp_path / "bank"
    assert main(["generate", "--ckpt", str(ckpt), "--out", str(out), "--spec", str(spec), "--masks", "bank"]) == 0
    s = load(out)
    assert str(s["mask_source"]) == "bank" and s["images"].shape == (12, 2, 64, 64)
    lesion = s["label"] == cache.classes.index("lesion")
    rows = s["mask_index"]
    assert (rows[~lesion] == -1).all() and (s["images"][~lesion, 1] == -1).all()  # no-lesion class: empty mask
    assert (rows[lesion] >= 0).all()
    idx = cache.index
    assert (idx["split"][rows[lesion]] == "train").all() and (idx["has_lesion"][rows[lesion]] == 1).all()
    assert set(idx["subject_id"][rows[lesion]]) <= set(idx["subject_id"][idx["split"] == "train"])
    # z-bin 7 has training lesions; z-bin 4 takes the nearest z-bin that has some (6), never a test slice
    np.testing.assert_array_equal(idx["zbin"][rows[lesion]], np.where(s["zbin"][lesion] == 7, 7, 6))
    np.testing.assert_array_equal(s["images"][lesion, 1] > 0, np.asarray(cache.masks[rows[lesion], 0]) > 0)
    assert set(np.unique(s["images"][:, 1])) == {-1.0, 1.0}
    assert len(set(rows[lesion & (s["zbin"] == 7)])) == 3  # taken in turn, not one mask three times
    assert "fidelity" not in s and not (out / "fidelity.csv").exists()


def test_bank_refuses_another_cache_and_models_without_mask_conditioning(ckpt, cache, demo_cache, tmp_path, capsys):
    from jsddpm.config import load_config

    other = tmp_path / "other_cache"
    shutil.copytree(demo_cache, other)
    (other / "stats.json").write_text((other / "stats.json").read_text().replace("{", '{"note": "x", ', 1))
    out = tmp_path / "x"
    assert main(["generate", "--ckpt", str(ckpt), "--out", str(out), "--masks", "bank", "--cache", str(other)]) == 2
    one_line_error(capsys, "not the cache")
    unrecorded = write_random_checkpoint(tmp_path / "old.ckpt", load_config(None, TINY64), 0.1, cache.classes,
                                         cache.priors, None)  # no fingerprint: the bank cannot be checked
    assert main(["generate", "--ckpt", str(unrecorded), "--out", str(out), "--masks", "bank", "--cache",
                 str(demo_cache)]) == 2
    one_line_error(capsys, "records no training-cache fingerprint")
    joint = write_random_checkpoint(tmp_path / "joint.ckpt", load_config(None, TINY64[:-1]), 0.1, cache.classes,
                                    cache.priors, None, cache_fingerprint=cache.fingerprint)
    for source in ("bank", "generated", str(tmp_path / "m.npy")):
        assert main(["generate", "--ckpt", str(joint), "--out", str(out), "--masks", source]) == 2
        one_line_error(capsys, "model.mask_conditioning")
    assert not out.exists()


def test_mask_augment_keeps_masks_near_and_inside_the_prior():
    from jsddpm.generation.sources import jitter_mask

    yy, xx = np.mgrid[:48, :48]
    allowed = (yy - 24) ** 2 + (xx - 24) ** 2 < 20**2
    mask = ((yy - 20) ** 2 + (xx - 14) ** 2 < 9) | ((yy - 20) ** 2 + (xx - 17) ** 2 < 4)  # an asymmetric blob
    rng = np.random.default_rng(0)
    out = [jitter_mask(mask, allowed, rng) for _ in range(40)]
    assert all(not (m & ~allowed).any() and 0.7 * mask.sum() <= m.sum() <= 1.3 * mask.sum() for m in out)
    cx = [np.argwhere(m)[:, 1].mean() for m in out]  # mirrored to the other hemisphere about half the time
    left, right = sum(c < 24 for c in cx), sum(c > 24 for c in cx)
    assert left >= 10 and right >= 10
    centre_y = [np.argwhere(m)[:, 0].mean() for m in out]
    assert max(abs(c - np.argwhere(mask)[:, 0].mean()) for c in centre_y) <= 48 / 16 + 1.5  # small shifts only
    assert len({m.tobytes() for m in out}) > 10
    assert np.array_equal(jitter_mask(mask, mask, rng, degrees=0, shift=0.2), mask)  # nothing else fits: as it is


# ---------------------------------------------------------------------------------- user masks
def disc_masks(centres, size=64, radius=3) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2 for cy, cx in centres])


def test_prior_zbins_picks_the_best_cover_with_ties_to_the_larger_brain():
    from jsddpm.generation.masks import prior_zbins

    priors = np.zeros((3, 20, 20), np.float32)
    priors[0, :, :10] = 1.0          # left half
    priors[1, :, :] = 0.5            # everywhere, half covered
    priors[2, 5:15, :10] = 1.0       # the middle of the left half: a smaller brain than 0
    masks = disc_masks([(10, 4), (10, 15), (2, 4)], size=20, radius=1)
    empty = np.zeros((1, 20, 20), bool)
    np.testing.assert_array_equal(prior_zbins(np.concatenate([masks, empty]), priors), [0, 1, 0, 0])


def test_path_masks_are_all_used_carried_exactly_and_placed_by_prior_coverage(ckpt, cache, tmp_path):
    from jsddpm.generation.masks import prior_zbins

    masks = disc_masks([(30, 20), (36, 40), (20, 32), (44, 30)])
    masks[2] = False  # an empty mask: a no-lesion sample
    npy = tmp_path / "masks.npy"
    np.save(npy, masks.astype(np.int8) * 2 - 1)  # the {-1, +1} encoding
    out = tmp_path / "path"
    assert main(["generate", "--ckpt", str(ckpt), "--out", str(out), "--masks", str(npy)]) == 0
    s = load(out)
    np.testing.assert_array_equal(s["images"][:, 1] > 0, masks)  # every mask, in order, exactly
    np.testing.assert_array_equal(s["mask_index"], np.arange(4))
    np.testing.assert_array_equal(s["zbin"], prior_zbins(masks, cache.priors))
    assert s["zbin_from_prior"].all() and str(s["mask_source"]) == "path"
    np.testing.assert_array_equal(s["label"], [1, 1, 0, 1])  # lesion / no lesion by the mask
    assert len(set(s["seed"].tolist())) == 4

    # z-bins from a CSV beside the masks; a folder of PNGs ({0, 255}) gives the same masks
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    for k, m in enumerate(masks):
        Image.fromarray(m.astype(np.uint8) * 255).save(folder / f"m{k}.png")
    with open(folder / "zbins.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "zbin"], *[[f"m{k}.png", z] for k, z in zip(range(4), [3, 6, 6, 9])]])
    out2 = tmp_path / "png"
    assert main(["generate", "--ckpt", str(ckpt), "--out", str(out2), "--masks", str(folder)]) == 0
    s2 = load(out2)
    np.testing.assert_array_equal(s2["images"][:, 1] > 0, masks)
    np.testing.assert_array_equal(s2["zbin"], [3, 6, 6, 9])
    assert not s2["zbin_from_prior"].any()
    out3 = tmp_path / "flag"
    assert main(["generate", "--ckpt", str(ckpt), "--out", str(out3), "--masks", str(npy), "--mask-zbins", "5"]) == 0
    np.testing.assert_array_equal(load(out3)["zbin"], [5, 5, 5, 5])


@pytest.mark.parametrize("case", ["size", "values", "nan", "missing", "csv_rows", "flag_count", "spec"])
def test_bad_mask_files_end_in_one_line_and_leave_nothing(ckpt, tmp_path, capsys, case):
    good = disc_masks([(30, 20), (36, 40)]).astype(np.uint8)
    path, extra = tmp_path / "masks.npy", []
    if case == "size":
        np.save(path, good[:, :32, :32])
    elif case == "values":
        np.save(path, good * 3)
    elif case == "nan":
        bad = good.astype(np.float32)
        bad[0, 0, 0] = np.nan
        np.save(path, bad)
    elif case == "missing":
        path = tmp_path / "nowhere.npy"
    else:
        np.save(path, good)
        if case == "csv_rows":
            (tmp_path / "masks.csv").write_text("zbin\n3\n")
        elif case == "flag_count":
            extra = ["--mask-zbins", "1,2,3"]
        else:
            (tmp_path / "spec.json").write_text('{"count": 1}')
            extra = ["--spec", str(tmp_path / "spec.json")]
    out = tmp_path / "out"
    assert main(["generate", "--ckpt", str(ckpt), "--out", str(out), "--masks", str(path), *extra]) == 2
    line = one_line_error(capsys, "")
    needle = {"size": "(N, 64, 64)", "values": "not binary", "nan": "NaN", "missing": "not bank, generated",
              "csv_rows": "1 rows for 2 masks", "flag_count": "3 z-bins for 2 masks", "spec": "--spec"}[case]
    assert needle in line
    assert not out.exists() and not list(tmp_path.glob(".out*"))


# ----------------------------------------------------------------------------------- generated
def test_generated_masks_are_drawn_jointly_then_the_image_given_them(ckpt, cache, tmp_path):
    import torch

    from jsddpm.checkpoint import Checkpoint
    from jsddpm.draw import postprocess, sample_batch
    from jsddpm.generation.masks import mask_stage_seeds

    spec = tmp_path / "spec.json"
    spec.write_text('{"count": 2, "zbins": [6]}')
    out = tmp_path / "gen"
    assert main(["generate", "--ckpt", str(ckpt), "--out", str(out), "--spec", str(spec), "--masks", "generated"]) == 0
    s = load(out)
    assert str(s["mask_source"]) == "generated" and (s["mask_index"] == -1).all()
    c = Checkpoint.load(ckpt)
    net, cfg = c.model(True, "cpu"), c.config
    with torch.no_grad():
        joint = postprocess(sample_batch(net, cfg, s["zbin"], s["label"], mask_stage_seeds(s["seed"]), c.priors), True)
        np.testing.assert_array_equal(s["images"][:, 1], joint[:, 1])  # stage 1: the joint mode's masks
        given = postprocess(sample_batch(net, cfg, s["zbin"], s["label"], s["seed"], c.priors,
                                         mask=joint[:, 1:]), True)
    np.testing.assert_allclose(s["images"], given, atol=1e-5)  # stage 2: the image given that mask
    assert not np.allclose(s["images"][:, 0], joint[:, 0])  # not simply the joint pair


# ------------------------------------------------------------------------------------ fidelity
class StandIn:
    """A reference segmenter stand-in: lesion wherever the image is above `level`."""

    def __init__(self, level: float):
        self.level, self.info, self.calls = level, {"path": "stand-in", "source": "stand-in"}, 0

    def predict(self, images):
        self.calls += 1
        return images[:, 0] > self.level


def test_min_fidelity_keeps_pairs_at_or_above_it_and_records_every_score(ckpt, tmp_path, monkeypatch, capsys):
    from jsddpm.generation import fidelity
    from jsddpm.segmentation import pair_dice

    segmenter = StandIn(0.9)  # on this random network: lesion pairs score 0.01 - 0.2, lesion-free ones 0
    monkeypatch.setattr(fidelity, "reference_for", lambda cache, cfg, progress=None: segmenter)
    spec = tmp_path / "spec.json"
    spec.write_text('{"count": 4, "zbins": [7, 8]}')  # 4 training lesion masks each
    # augmented bank masks: each draw places its mask anew, so a redraw can score otherwise
    base = ["generate", "--ckpt", str(ckpt), "--spec", str(spec), "--masks", "bank"]
    assert main([*base, "--out", str(tmp_path / "all"), "sample.mask_augment=true", "sample.score_fidelity=true"]) == 0
    everything = load(tmp_path / "all")
    scores = everything["fidelity"]
    assert len(scores) == 16 and np.isnan(everything["min_fidelity"]) and everything["fidelity_keep_rate"] == 1
    recomputed = pair_dice(segmenter.predict(everything["images"]), everything["images"][:, 1] > 0)
    np.testing.assert_allclose(scores, recomputed)
    threshold = float(np.median(scores[everything["label"] == 1]))  # about half the lesion pairs pass at once
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "kept"), "sample.mask_augment=true", f"sample.min_fidelity={threshold}",
                 "sample.fidelity_tries=3"]) == 0
    kept = load(tmp_path / "kept")
    assert (kept["fidelity"] >= threshold).all() and kept["min_fidelity"] == threshold
    np.testing.assert_allclose(kept["fidelity"], pair_dice(segmenter.predict(kept["images"]),
                                                           kept["images"][:, 1] > 0))
    conditions = zip(everything["zbin"], everything["label"], everything["index"])
    key = {(z, c, i): k for k, (z, c, i) in enumerate(conditions)}
    rows = np.array([key[(z, c, i)] for z, c, i in zip(kept["zbin"], kept["label"], kept["index"])])
    # a pair kept at its first draw is exactly the unfiltered run's pair; a later draw has the redraw's seed
    first = kept["fidelity_attempt"] == 0
    assert sorted(rows[first]) == np.flatnonzero(scores >= threshold).tolist()
    np.testing.assert_array_equal(kept["images"][first], everything["images"][rows[first]])
    for k in np.flatnonzero(~first):
        assert kept["seed"][k] == fidelity.retry_seeds(everything["seed"][rows[k]:rows[k] + 1],
                                                       int(kept["fidelity_attempt"][k]))[0]
    assert (~first).any()  # some pairs below the threshold at first reached it when drawn again
    # fidelity.csv: every draw, at most 3 per requested pair; the keep rate is kept / draws
    with open(tmp_path / "kept" / "fidelity.csv") as f:
        log = list(csv.DictReader(f))
    assert len(log) > 16 and max(np.bincount([int(r["position"]) for r in log])) <= 3
    assert sum(int(r["kept"]) for r in log) == len(kept["images"]) and kept["fidelity_requested"] == 16
    assert kept["fidelity_keep_rate"] == pytest.approx(len(kept["images"]) / len(log))
    assert all((float(r["fidelity"]) >= threshold) == bool(int(r["kept"])) for r in log)
    dropped = 16 - len(kept["images"])
    assert dropped >= 8 and f"warning: {dropped} of 16" in capsys.readouterr().out  # lesion-free pairs score 0


def test_a_threshold_no_pair_reaches_is_one_line_and_leaves_nothing(ckpt, tmp_path, monkeypatch, capsys):
    from jsddpm.generation import fidelity

    monkeypatch.setattr(fidelity, "reference_for", lambda cache, cfg, progress=None: StandIn(-2.0))  # fires everywhere
    out = tmp_path / "none"
    spec = tmp_path / "spec.json"
    spec.write_text('{"count": 1, "zbins": [7]}')
    assert main(["generate", "--ckpt", str(ckpt), "--out", str(out), "--spec", str(spec), "--masks", "bank",
                 "sample.min_fidelity=1.0", "sample.fidelity_tries=2"]) == 2
    one_line_error(capsys, "sample.min_fidelity")
    assert not out.exists()


def test_inpaint_scores_with_the_reference_segmenter_stored_beside_the_cache(ckpt, demo_cache, tmp_path):
    """The real reference segmenter (tiny settings from the checkpoint's config): trained once into
    <cache>/segmenters/, and every inpainted pair's score is its Dice against the mask."""
    from jsddpm.config import load_config
    from jsddpm.data.cache import load_cache
    from jsddpm.segmentation import load_segmenter, pair_dice, segmenter_store

    copy = tmp_path / "cache"
    # without the segmenters other tests' run-all stored in the shared cache: this store starts empty
    shutil.copytree(demo_cache, copy, ignore=shutil.ignore_patterns("segmenters"))
    cache = load_cache(copy)
    cfg = load_config(None, [*TINY64, "diagnostics.utility_steps=4", "diagnostics.utility_eval_every=2",
                             "diagnostics.utility_widths=[4,8]"])
    small = write_random_checkpoint(tmp_path / "c.ckpt", cfg, 0.1, cache.classes, cache.priors, None,
                                    cache_fingerprint=cache.fingerprint)
    out = tmp_path / "inp"
    assert main(["inpaint", "--ckpt", str(small), "--source", str(copy), "--out", str(out), "--n", "3",
                 "inpaint.resample=0", "sample.score_fidelity=true"]) == 0
    assert segmenter_store(copy) == copy / "segmenters"
    stored = list((copy / "segmenters").glob("segmenter-*.pt"))
    assert len(stored) == 1
    s = load(out)
    expected = pair_dice(load_segmenter(stored[0]).predict(s["images"][:, :1]), s["images"][:, 1] > 0)
    np.testing.assert_allclose(s["fidelity"], expected)
    assert (out / "fidelity.csv").is_file() and len(s["images"]) == 3


def test_inpainting_can_give_a_mask_conditioned_network_the_target_mask(ckpt, cache, demo_cache, tmp_path, capsys):
    """inpaint.mask_condition=true tells a mask-conditioned network the target mask: the lesion region
    changes with it, and mask guidance 0 is the joint mode (the default: the mask known only through the
    kept channel); outside the generated ring the source and the given mask stay exact either way. A
    network trained without mask conditioning is refused in one line."""
    from jsddpm.generation import inpaint as inpaint_module

    def run(name: str, *extra: str, model=ckpt) -> dict | None:
        out = tmp_path / name
        code = main(["inpaint", "--ckpt", str(model), "--source", str(demo_cache), "--out", str(out), "--n", "3",
                     "inpaint.resample=0", "inpaint.steps=4", *extra])
        return load(out) if code == 0 else None

    joint = run("joint")
    given = run("given", "inpaint.mask_condition=true")
    guidance0 = run("g0", "inpaint.mask_condition=true", "sample.mask_guidance=0")
    for s in (given, guidance0):
        np.testing.assert_array_equal(s["images"][:, 1], joint["images"][:, 1])  # the same bank masks, exact
    ring = inpaint_module.dilate_in_plane(joint["images"][:, 1] > 0, 3)
    for s in (given, guidance0):
        source = cache.joint(s["source_index"])
        np.testing.assert_array_equal(s["images"][:, 0][~ring], source[:, 0][~ring])
    np.testing.assert_allclose(guidance0["images"], joint["images"], atol=1e-4)
    assert np.abs(given["images"][:, 0][ring] - joint["images"][:, 0][ring]).max() > 1e-2

    from jsddpm.config import load_config

    cfg = load_config(None, [*TINY64[:-1], f"data.cache_dir={demo_cache}"])  # without model.mask_conditioning
    plain = write_random_checkpoint(tmp_path / "plain.ckpt", cfg, 0.1, cache.classes, cache.priors, None,
                                    cache_fingerprint=cache.fingerprint)
    capsys.readouterr()
    assert run("refused", "inpaint.mask_condition=true", model=plain) is None
    one_line_error(capsys, "inpaint.mask_condition=true needs a model trained with model.mask_conditioning=true")
    assert not (tmp_path / "refused").exists()


def test_segmenter_store_falls_back_to_the_user_cache_for_a_read_only_cache(tmp_path, monkeypatch):
    import os

    from jsddpm.segmentation import segmenter_store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    assert segmenter_store(tmp_path) == tmp_path / "segmenters"
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert segmenter_store(tmp_path) == tmp_path / "user" / "jsddpm" / "segmenters"


def test_inpaint_min_fidelity_filters_inpainted_pairs_in_place_of_sample_min_fidelity(ckpt, demo_cache, tmp_path,
                                                                                     monkeypatch):
    """inpaint.min_fidelity is the inpainted pairs' own threshold (the demo filters its training pairs but
    not its generated set): it replaces sample.min_fidelity, here an unreachable 1.0, and is recorded."""
    from jsddpm.generation import fidelity

    segmenter = StandIn(0.0)
    monkeypatch.setattr(fidelity, "reference_for", lambda cache, cfg, progress=None: segmenter)
    def run(name: str, *overrides: str) -> int:
        return main(["inpaint", "--ckpt", str(ckpt), "--source", str(demo_cache), "--out", str(tmp_path / name),
                     "--n", "6", "inpaint.resample=0", "inpaint.steps=4", *overrides])

    assert run("all", "sample.score_fidelity=true") == 0
    scores = load(tmp_path / "all")["fidelity"]
    threshold = float(np.sort(scores)[len(scores) // 2])  # about half pass at their first draw
    assert 0 < threshold < 1
    assert run("kept", "sample.min_fidelity=1.0", "sample.fidelity_tries=3", f"inpaint.min_fidelity={threshold}") == 0
    kept = load(tmp_path / "kept")
    assert (kept["fidelity"] >= threshold).all() and kept["min_fidelity"] == threshold
    assert len(kept["images"]) >= 3
    assert f"min_fidelity: {threshold}" in (tmp_path / "kept" / "config.yaml").read_text()
