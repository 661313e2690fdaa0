"""The demo cohort: real anatomy, FLAIR-like contrast, FCD-like lesions, deterministic per seed."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
from scipy import ndimage

from jsddpm.cli import main
from jsddpm.data.phantom import load_template, make_subject, smooth_field


def test_subject_is_deterministic_and_flair_like():
    template = load_template(2)
    a_image, a_mask = make_subject(template, np.random.default_rng([7, 3]), n_lesions=2)
    b_image, b_mask = make_subject(template, np.random.default_rng([7, 3]), n_lesions=2)
    c_image, _ = make_subject(template, np.random.default_rng([8, 3]), n_lesions=2)
    np.testing.assert_array_equal(a_image, b_image)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert not np.array_equal(a_image, c_image)
    assert a_image.dtype == np.int16 and a_image.min() >= 0 and a_image.shape == template.gm.shape
    # contrast: grey matter brighter than white matter, CSF darkest (tissue taken on the template
    # grid; the deformation moves it a few voxels, so compare the medians of pure tissue)
    image = c_image
    gm = image[template.gm > 0.9]
    wm = image[template.wm > 0.95]
    csf = image[(template.brain > 0.5) & (template.gm + template.wm < 0.05)]
    assert np.median(gm) > np.median(wm) > np.median(csf)
    assert np.median(wm) > 300  # a scanner-like intensity scale, not [0, 1]


def test_lesions_are_hyperintense_blobs_of_plausible_size():
    template = load_template(2)
    for seed in range(4):
        image, mask = make_subject(template, np.random.default_rng([0, seed]), n_lesions=1)
        labels, n = ndimage.label(mask)
        assert 1 <= n <= 2  # one blob (its noisy edge can split off a small piece)
        extent_mm = 2.0 * max(s.stop - s.start for obj in ndimage.find_objects(labels) for s in obj)
        assert 2.0 <= extent_mm <= 30.0
        ring = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(mask, iterations=1)
        assert image[mask > 0].mean() > image[ring].mean()


def test_smooth_field_has_the_requested_amplitude():
    field = smooth_field(np.random.default_rng(0), (20, 30, 25), coarse=4, amplitude=0.5)
    assert field.shape == (20, 30, 25) and abs(field.std() - 0.5) < 1e-4
    assert np.abs(np.diff(field, axis=1)).max() < 0.5  # smooth: neighbours differ little


def test_cli_writes_a_manifest_that_cache_reads(tmp_path, capsys):
    out = tmp_path / "phantom"
    assert main(["phantom", "--out", str(out), "--subjects", "2", "--patients", "1", "--seed", "5"]) == 0
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["group"] for r in rows] == ["control", "patient"] and rows[0]["mask"] == ""
    image = nib.load(out / rows[1]["image"])
    mask = nib.load(out / rows[1]["mask"])
    assert image.get_data_dtype() == np.int16 and np.allclose(image.affine, mask.affine)
    assert np.asarray(mask.dataobj).sum() > 0
    assert (out / "versions.json").is_file()
    assert main(["phantom", "--out", str(out)]) == 2  # never overwrites a cohort
    assert "not empty" in capsys.readouterr().err
    assert main(["phantom", "--out", str(tmp_path / "x"), "--subjects", "2", "--patients", "3"]) == 2
    assert "--patients" in capsys.readouterr().err and not (tmp_path / "x").exists()
