"""Volumes -> slice cache: known slices / z-bins / lesion rows, splits, priors, and every bad input."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jsddpm.cli import main
from jsddpm.config import load_config
from jsddpm.data.cache import build_volume_cache, load_cache, zbin_of
from jsddpm.data.splits import assign_splits, split_counts
from jsddpm.errors import UserError

ONE_MM = ["data.image_size=64", "data.fov_mm=0", "data.spacing_mm=[1,1,1]", "data.z_trim=0"]


def save_nifti(path: Path, data: np.ndarray, affine=None) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path.name


def box_volume(x=(10, 54), y=(10, 54), z=(10, 50), shape=(64, 64, 60)) -> np.ndarray:
    """A brain-like box with an intensity ramp (so percentiles differ) on a zero background."""
    vol = np.zeros(shape, dtype=np.float32)
    ramp = np.linspace(100, 200, x[1] - x[0], dtype=np.float32)[:, None, None]
    vol[x[0]:x[1], y[0]:y[1], z[0]:z[1]] = ramp
    return vol


def write_manifest(folder: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subject_id", "image", "mask", "group"])
        writer.writerows(rows)
    return path


def test_known_volume_gives_expected_slices_zbins_and_lesion_rows(tmp_path):
    vol = box_volume()
    vol[:, :, 10:12] = 0  # the two lowest brain slices keep only a tiny patch -> dropped
    vol[30:32, 30:32, 10:12] = 150
    mask = np.zeros(vol.shape, dtype=np.uint8)
    mask[40:43, 15:19, 20:25] = 1  # 3 x 4 voxels on slices 20..24
    vol[40:43, 15:19, 20:25] = 250
    rows = [("s1", save_nifti(tmp_path / "s1.nii.gz", vol), save_nifti(tmp_path / "m1.nii.gz", mask), "patient")]
    cfg = load_config(None, [*ONE_MM, "data.n_zbins=4", "data.split_fractions=[1,0,0]"])
    build_volume_cache(write_manifest(tmp_path, rows), tmp_path / "cache", cfg)
    cache = load_cache(tmp_path / "cache")

    z = np.arange(12, 50)  # brain extent 10..49, slices 10 and 11 below min_brain_fraction
    z_norm = (z - 10) / 39
    np.testing.assert_array_equal(cache.index["z"], z)
    np.testing.assert_allclose(cache.index["z_norm"], z_norm, atol=1e-6)
    np.testing.assert_array_equal(cache.index["zbin"], np.minimum(np.floor(z_norm * 4), 3))
    np.testing.assert_array_equal(cache.index["has_lesion"], ((z >= 20) & (z <= 24)).astype(int))
    np.testing.assert_array_equal(cache.index["lesion_area"], np.where((z >= 20) & (z <= 24), 12, 0))
    # RAS display: columns follow x, anterior (large y) at the top row
    lesion_slice = cache.masks[np.flatnonzero(cache.index["z"] == 22)[0], 0]
    rows_, cols = np.nonzero(lesion_slice)
    assert set(cols) == {40, 41, 42} and set(rows_) == {63 - y for y in range(15, 19)}
    assert cache.images.shape == (len(z), 1, 64, 64) and cache.images.dtype == np.float32
    assert cache.images.min() == -1.0 and cache.images.max() == 1.0
    assert cache.images[0, 0, 0, 0] == -1.0  # background
    assert set(np.unique(cache.masks)) == {0, 1}
    assert cache.stats["classes"] == ["no_lesion", "lesion"] and cache.stats["n_zbins"] == 4
    np.testing.assert_array_equal(cache.index["label"], cache.index["has_lesion"])
    for name in ("config.yaml", "versions.json", "priors.npy"):
        assert (tmp_path / "cache" / name).is_file()
    joint = cache.joint([0, 10])
    assert joint.shape == (2, 2, 64, 64) and set(np.unique(joint[:, 1])) <= {-1.0, 1.0}


def test_zbin_formula_edges():
    np.testing.assert_array_equal(zbin_of(np.array([0.0, 0.0999, 0.1, 0.95, 1.0]), 10), [0, 0, 1, 9, 9])


def test_priors_come_from_train_subjects_only(tmp_path):
    # every subject covers the same z range, each with its own in-plane box: the prior of any z-bin
    # is then exactly the mean of the TRAIN subjects' boxes
    boxes = {f"s{i}": ((14 + 2 * i, 50 - i), (12 + i, 52 - 3 * i)) for i in range(8)}
    rows = []
    for sid, (bx, by) in boxes.items():
        rows.append((sid, save_nifti(tmp_path / f"{sid}.nii.gz", box_volume(bx, by, shape=(64, 64, 60))), "",
                     "control" if int(sid[1]) % 2 else "patient"))
    cfg = load_config(None, [*ONE_MM, "data.n_zbins=3", "data.split_fractions=[0.5,0.25,0.25]"])
    build_volume_cache(write_manifest(tmp_path, rows), tmp_path / "cache", cfg)
    cache = load_cache(tmp_path / "cache")
    train = sorted(set(cache.index["subject_id"][cache.indices("train")]))
    assert 0 < len(train) < len(boxes)

    def box_slice(sid):
        out = np.zeros((64, 64), dtype=np.float32)
        (x0, x1), (y0, y1) = boxes[sid]
        # the grid is centred on each box: place it the way plan_grid does (origin snapped to a voxel)
        ox = int(np.rint((x0 + x1 - 1) / 2 - 31.5))
        oy = int(np.rint((y0 + y1 - 1) / 2 - 31.5))
        out[x0 - ox:x1 - ox, y0 - oy:y1 - oy] = 1
        return np.flip(out.T, axis=0)

    expected = np.mean([box_slice(s) for s in train], axis=0)
    everyone = np.mean([box_slice(s) for s in boxes], axis=0)
    assert not np.allclose(expected, everyone)
    for b in range(3):
        np.testing.assert_allclose(cache.priors[b], expected, atol=1e-6)


def test_splits_are_subject_disjoint_stratified_and_seeded():
    ids = [f"c{i}" for i in range(30)] + [f"p{i}" for i in range(12)]
    groups = ["control"] * 30 + ["patient"] * 12
    splits, folds = assign_splits(ids, groups, [0.7, 0.15, 0.15], n_folds=5, seed=3)
    assert len(splits) == len(ids)  # one split per subject: disjoint by construction
    for group, n in (("control", 30), ("patient", 12)):
        got = [s for s, g in zip(splits, groups) if g == group]
        assert [got.count(name) for name in ("train", "val", "test")] == split_counts(n, [0.7, 0.15, 0.15])
    assert split_counts(30, [0.7, 0.15, 0.15]) in ([21, 5, 4], [21, 4, 5])
    assert all((f == -1) == (s == "test") for s, f in zip(splits, folds))
    trainval = [f for f in folds if f >= 0]
    assert max(trainval.count(k) for k in range(5)) - min(trainval.count(k) for k in range(5)) <= 1
    assert assign_splits(ids, groups, [0.7, 0.15, 0.15], 5, 3) == (splits, folds)
    assert assign_splits(ids, groups, [0.7, 0.15, 0.15], 5, 4)[0] != splits
    assert split_counts(4, [0.7, 0.15, 0.15]) == [2, 1, 1]  # small groups still reach every split


def test_demo_cache_splits_are_subject_disjoint(demo_cache):
    cache = load_cache(demo_cache)
    subject_split = {}
    for sid, split in zip(cache.index["subject_id"], cache.index["split"]):
        assert subject_split.setdefault(sid, split) == split
    for split in ("train", "val", "test"):
        groups = set(cache.index["group"][cache.indices(split)])
        assert groups == {"control", "patient"}  # stratified: both groups in every split
    # the default class of a slice is its pathology, read from its mask
    assert cache.stats["classes"] == ["no_lesion", "lesion"]
    np.testing.assert_array_equal(cache.index["label"], cache.index["has_lesion"])
    assert cache.index["has_lesion"][cache.index["group"] == "control"].sum() == 0
    assert cache.index["has_lesion"][cache.index["group"] == "patient"].sum() > 0


def test_mask_threshold_binarises_soft_masks(tmp_path):
    vol = box_volume()
    soft = np.zeros(vol.shape, dtype=np.float32)
    soft[30:33, 30:33, 30] = 0.8
    soft[20:22, 20:22, 30] = 0.3
    rows = [("s1", save_nifti(tmp_path / "s1.nii.gz", vol), save_nifti(tmp_path / "m.nii.gz", soft), "patient")]
    cfg = load_config(None, [*ONE_MM, "data.split_fractions=[1,0,0]", "data.mask_threshold=0.5"])
    build_volume_cache(write_manifest(tmp_path, rows), tmp_path / "cache", cfg)
    assert load_cache(tmp_path / "cache").index["lesion_area"].sum() == 9


# ---------------------------------------------------------------------------------------- bad input
SMALL = ["data.image_size=16", "data.fov_mm=0", "data.spacing_mm=[1,1,1]", "data.split_fractions=[1,0,0]"]


def _small():
    return box_volume((4, 12), (4, 12), (4, 12), shape=(16, 16, 16))


def _truncated(folder):
    save_nifti(folder / "t.nii.gz", _small())
    data = (folder / "t.nii.gz").read_bytes()
    (folder / "t.nii.gz").write_bytes(data[: len(data) // 2])
    return "t.nii.gz"


def _not_nifti(folder):
    (folder / "x.nii").write_text("this is not a NIfTI file\n")
    return "x.nii"


def _with(value_setter):
    def make(folder):
        vol = _small()
        value_setter(vol)
        return save_nifti(folder / "bad.nii.gz", vol)
    return make


def _mask_case(mask, affine=None):
    def make(folder):
        save_nifti(folder / "img.nii.gz", _small())
        return "img.nii.gz", save_nifti(folder / "bad_mask.nii.gz", mask, affine)
    return make


def _set_nan(v):
    v[8, 8, 8] = np.nan


def _set_inf(v):
    v[8, 8, 8] = np.inf


def _set_zero(v):
    v[:] = 0


_shifted = np.eye(4)
_shifted[0, 3] = 5.0
_two = np.zeros((16, 16, 16), np.uint8)
_two[8, 8, 8] = 2

# name -> (files maker returning image or (image, mask), text expected in the message, extra overrides)
BAD_VOLUMES = {
    "missing file": (lambda folder: "nope.nii.gz", "not found", SMALL),
    "truncated nifti": (_truncated, "not a readable NIfTI", SMALL),
    "not a nifti": (_not_nifti, "not a readable NIfTI", SMALL),
    "4D image": (lambda folder: save_nifti(folder / "bad.nii.gz", np.ones((16, 16, 16, 2), np.float32)),
                 "3D", SMALL),
    "NaN voxels": (_with(_set_nan), "NaN", SMALL),
    "Inf voxels": (_with(_set_inf), "NaN or Inf", SMALL),
    "all-zero volume": (_with(_set_zero), "all zeros", SMALL),
    "mask shape": (_mask_case(np.zeros((16, 16, 15), np.uint8)), "shape", SMALL),
    "mask affine": (_mask_case(np.zeros((16, 16, 16), np.uint8), _shifted), "affine", SMALL),
    "mask values": (_mask_case(_two), "mask_threshold", SMALL),
}


def assert_clean_failure(capsys, argv, out: Path, expect_file: str, expect_text: str):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expect_file in err and expect_text in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp folder left


@pytest.mark.parametrize("case", list(BAD_VOLUMES))
def test_bad_volume_input_fails_cleanly(case, tmp_path, capsys):
    make, text, overrides = BAD_VOLUMES[case]
    files = make(tmp_path)
    image, mask = files if isinstance(files, tuple) else (files, "")
    good = save_nifti(tmp_path / "good.nii.gz", _small())
    manifest = write_manifest(tmp_path, [("good", good, "", "control"), ("bad", image, mask, "patient")])
    out = tmp_path / "out" / "cache"
    expect_file = mask or image
    assert_clean_failure(capsys, ["cache", "--manifest", str(manifest), "--out", str(out), *overrides],
                         out, expect_file, text)


BAD_MANIFESTS = {
    "duplicate subject_id": ([("a", "good.nii.gz", "", "control"), ("a", "good.nii.gz", "", "control")],
                             "duplicate subject_id", SMALL),
    "empty manifest": ([], "no subjects", SMALL),
    "empty split": ([("a", "good.nii.gz", "", "control"), ("b", "good.nii.gz", "", "patient")],
                    "would be empty", [s for s in SMALL if "split" not in s]),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_bad_manifest_fails_cleanly(case, tmp_path, capsys):
    rows, text, overrides = BAD_MANIFESTS[case]
    save_nifti(tmp_path / "good.nii.gz", _small())
    manifest = write_manifest(tmp_path, rows)
    out = tmp_path / "cache"
    assert_clean_failure(capsys, ["cache", "--manifest", str(manifest), "--out", str(out), *overrides],
                         out, "manifest.csv", text)


def test_missing_manifest_and_existing_output(tmp_path, capsys):
    out = tmp_path / "cache"
    assert_clean_failure(capsys, ["cache", "--manifest", str(tmp_path / "m.csv"), "--out", str(out)],
                         out, "m.csv", "not found")
    out.mkdir()
    (out / "keep.txt").write_text("x")
    save_nifti(tmp_path / "good.nii.gz", _small())
    manifest = write_manifest(tmp_path, [("a", "good.nii.gz", "", "control")])
    assert main(["cache", "--manifest", str(manifest), "--out", str(out), *SMALL]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "x"



def brain_touches_border(images: np.ndarray) -> bool:
    border = np.concatenate([images[:, 0, 0, :], images[:, 0, -1, :], images[:, 0, :, 0], images[:, 0, :, -1]], 1)
    return bool((border > -1).any())


def test_cli_caches_the_phantom_with_the_whole_brain_in_view(demo_phantom, demo_cache, tmp_path, capsys):
    assert not brain_touches_border(load_cache(demo_cache).images)  # 64 px
    out = tmp_path / "cache48"
    argv = ["cache", "--manifest", str(demo_phantom / "manifest.csv"), "--out", str(out), "data.image_size=48"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "slices of 10 subjects" in printed and "train" in printed
    cache = load_cache(out)
    assert cache.images.shape[1:] == (1, 48, 48) and not brain_touches_border(cache.images)
    fov = load_config().data.fov_mm
    assert cache.stats["spacing_mm"][:2] == [fov / 48, fov / 48]


def test_slice_label_group_uses_the_manifest_groups(demo_phantom, tmp_path):
    from jsddpm.config import load_config
    from jsddpm.data.cache import build_volume_cache

    cfg = load_config(None, ["data.slice_label=group", "data.image_size=40", "data.n_zbins=5"])
    build_volume_cache(demo_phantom / "manifest.csv", tmp_path / "c", cfg)
    cache = load_cache(tmp_path / "c")
    assert cache.stats["classes"] == ["control", "patient"]
    np.testing.assert_array_equal(cache.index["label"], (cache.index["group"] == "patient").astype(int))



# ------------------------------------------------------------------------ the validation stamp
@pytest.fixture
def stamped_cache(tmp_path, monkeypatch):
    """A tiny cache, and a clock 10 s ahead for its loads: its files look settled (older than
    STAMP_SETTLE_NS), so a passed full check writes a stamp that the next load trusts. Yields
    (cache folder, list of `values` flags check_cache was called with)."""
    import time as real_time
    import types

    from test_training import write_tiny_cache

    import jsddpm.data.cache as cache_module

    root = write_tiny_cache(tmp_path / "cache")
    later = types.SimpleNamespace(time_ns=lambda: real_time.time_ns() + 10_000_000_000)
    monkeypatch.setattr(cache_module, "time", later)
    calls = []
    check = cache_module.check_cache
    monkeypatch.setattr(cache_module, "check_cache", lambda cache, values=True: (calls.append(values),
                                                                                 check(cache, values))[1])
    return root, calls


def edit_after_a_tick(edit) -> None:
    """An edit in a later file-system clock tick than the cache's build (the stamp's settle time guards
    edits within one tick; the fixture's clock skips that guard)."""
    import time

    time.sleep(0.05)
    edit()


def test_second_load_trusts_the_stamp_and_any_edit_brings_back_the_full_check(stamped_cache):
    root, calls = stamped_cache
    first = load_cache(root)
    assert (root / "validated.npz").is_file() and calls == [True]
    second = load_cache(root)
    assert calls == [True, False]  # values not read again, index.csv not parsed again: the stamp holds it
    np.testing.assert_array_equal(first.images, second.images)
    assert list(first.index) == list(second.index)
    for name, column in first.index.items():
        assert second.index[name].dtype == column.dtype
        np.testing.assert_array_equal(second.index[name], column)

    images = np.load(root / "images.npy")
    images[1, 0, 3, 3] = np.nan  # same size, same name: only the times tell
    edit_after_a_tick(lambda: np.save(root / "images.npy", images))
    with pytest.raises(UserError, match=r"images\.npy: holds NaN"):
        load_cache(root)
    assert calls[-1] is True


def test_an_edit_that_restores_the_modification_time_is_still_caught(stamped_cache):
    root, calls = stamped_cache
    load_cache(root)
    masks = root / "masks.npy"
    before = masks.stat()
    data = np.load(masks)
    data[0, 0, 0, 0] = 7
    edit_after_a_tick(lambda: np.save(masks, data))
    os.utime(masks, ns=(before.st_atime_ns, before.st_mtime_ns))  # `touch -r`: mtime as stamped, ctime is not
    with pytest.raises(UserError, match=r"masks\.npy: holds values other than 0 and 1"):
        load_cache(root)


def test_an_edited_index_is_checked_in_full_and_stamped_again(stamped_cache):
    root, calls = stamped_cache
    load_cache(root)
    index = root / "index.csv"
    text = index.read_text()
    edit_after_a_tick(lambda: index.write_text(text.replace(",train,", ",test,", 1)))
    load_cache(root)
    assert calls == [True, True]  # checked in full again: a new stamp
    load_cache(root)
    assert calls == [True, True, False]


def test_a_fresh_stamp_is_not_trusted_within_the_settle_time(tmp_path, monkeypatch):
    """Without the fixture's clock: files written just now may be edited again in the same clock tick
    without a visible change, so the next load checks in full again."""
    from test_training import write_tiny_cache

    import jsddpm.data.cache as cache_module

    root = write_tiny_cache(tmp_path / "cache")
    calls = []
    check = cache_module.check_cache
    monkeypatch.setattr(cache_module, "check_cache", lambda cache, values=True: (calls.append(values),
                                                                                 check(cache, values))[1])
    load_cache(root)
    load_cache(root)
    assert calls == [True, True] and (root / "validated.npz").is_file()


def test_read_only_cache_keeps_its_stamp_in_the_user_cache_folder(stamped_cache, tmp_path, monkeypatch):
    import jsddpm.io

    root, calls = stamped_cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    write = jsddpm.io.atomic_write_bytes

    def read_only(path, data):
        if Path(path).parent == root:
            raise PermissionError(13, "Permission denied", str(path))
        write(path, data)

    monkeypatch.setattr(jsddpm.io, "atomic_write_bytes", read_only)
    load_cache(root)
    load_cache(root)
    assert calls == [True, False] and not (root / "validated.npz").exists()
    assert len(list((tmp_path / "xdg" / "jsddpm" / "cache_stamps").glob("*.npz"))) == 1


def test_a_damaged_stamp_only_costs_a_full_check(stamped_cache):
    root, calls = stamped_cache
    load_cache(root)
    (root / "validated.npz").write_bytes(b"PK\x03\x04 not a zip")
    load_cache(root)
    load_cache(root)
    assert calls == [True, True, False]
