"""Family 14, structure (anatomy): analytic answers, and known answers on real-like slices (the demo cohort):
real vs real within the null, tiles permuted within the brain flagged, a mirror left as it is."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from jsddpm.config import load_config
from jsddpm.diagnostics import runner, structure
from jsddpm.diagnostics.regions import tissues
from jsddpm.diagnostics.sets import ImageSet
from jsddpm.diagnostics.severity import metric_z

COMPONENTS = ("asymmetry_ratio", "outline_roughness_ratio", "midscale_band_ratio")


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, ["diagnostics.n_bootstrap=50", "diagnostics.n_null_repeats=30"]).diagnostics


@pytest.fixture(scope="module")
def halves(demo_cache):
    """The demo cache's slices that hold some brain, split into two subject-disjoint halves (5 + 5 subjects)."""
    from jsddpm.data.cache import load_cache

    cache = load_cache(demo_cache)
    images = np.asarray(cache.images, dtype=np.float32)
    masks = np.asarray(cache.masks)[:, 0] > 0
    subject = np.asarray(cache.index["subject_id"])
    keep = (images[:, 0] > -0.9).mean(axis=(1, 2)) > 0.05
    ids = np.unique(subject)
    first = np.isin(subject, ids[::2])
    def side(sel):
        return ImageSet(images[sel & keep], masks[sel & keep], subject[sel & keep])
    return side(first), side(~first)


def symmetric_head(size: int = 48, angle_deg: float = 0.0, seed: int = 0) -> np.ndarray:
    """An elliptical head whose texture mirrors exactly about its long axis, rotated by `angle_deg`."""
    rng = np.random.default_rng(seed)
    half = ndimage.gaussian_filter(rng.normal(size=(size, size)), 1.5)
    texture = half + half[:, ::-1]
    rr, cc = np.mgrid[:size, :size] - (size - 1) / 2
    head = (rr / (0.4 * size)) ** 2 + (cc / (0.3 * size)) ** 2 < 1
    img = np.where(head, 0.3 * texture / np.abs(texture).max(), -1.0)
    return ndimage.rotate(img, angle_deg, reshape=False, order=1, cval=-1.0).astype(np.float32)


# ------------------------------------------------------------------------------- analytic answers
@pytest.mark.parametrize("angle", [0.0, 4.0, -5.0])
def test_a_mirror_symmetric_head_has_symmetry_one_about_its_own_tilted_axis(cfg, angle):
    head = symmetric_head(angle_deg=angle)
    _, candidates = structure.midline_candidates(head[None] > -0.9)
    assert np.rad2deg(candidates[0, len(candidates[0]) // 4]) == pytest.approx(angle, abs=0.3)  # principal axis
    f = structure.features(head[None, None], None, cfg)
    # off the pixel grid, the bilinear reflection smooths the mirrored copy a little: 0.94-0.97 measured
    assert f["symmetry"][0] == pytest.approx(1.0, abs=0.08 if angle else 1e-6)
    noise = np.where(symmetric_head()[None] > -1, np.random.default_rng(1).normal(0, 0.3, (1, 48, 48)), -1.0)
    assert structure.features(noise[:, None].astype(np.float32), None, cfg)["symmetry"][0] < 0.4


def test_reflection_about_the_vertical_is_a_left_right_flip():
    x = np.random.default_rng(0).normal(size=(2, 10, 12)).astype(np.float32)
    centre = np.array([[4.5, 5.5], [3.0, 5.5]])  # the second: the row of the centre does not matter
    (out,) = structure.reflect([x], centre, np.zeros((2, 1)))
    np.testing.assert_allclose(out[:, 0], x[..., ::-1], atol=1e-5)


def test_outline_roughness_and_solidity(cfg):
    disc = symmetric_head()[None, None]
    ragged = disc.copy()
    ragged[0, 0, ::2, :] = np.where(np.arange(48) % 4 < 2, -1.0, ragged[0, 0, ::2, :])  # notches along the rim
    ragged[0, 0] = np.where(ndimage.binary_erosion(disc[0, 0] > -1, iterations=3), disc[0, 0], ragged[0, 0])
    f_disc, f_ragged = (structure.features(x, None, cfg) for x in (disc, ragged))
    assert 1.0 <= f_disc["roughness"][0] < 1.1 and f_disc["solidity"][0] > 0.95
    assert f_ragged["roughness"][0] > f_disc["roughness"][0] + 0.3
    assert f_ragged["solidity"][0] < f_disc["solidity"][0]


def test_permute_tiles_keeps_each_images_values_and_outline_and_moves_the_interior(cfg, halves):
    real = halves[0]
    t = tissues(real.images, real.masks, cfg)
    shuffled = structure.permute_tiles(t["gray"], t["roi"], 4, np.random.default_rng(0))
    np.testing.assert_array_equal(np.sort(shuffled.reshape(len(t["gray"]), -1)),
                                  np.sort(t["gray"].reshape(len(t["gray"]), -1)))
    # the outline stays (a dark pixel moved next to a filled hole's rim can rarely open the hole: < 0.1%)
    assert np.mean(tissues(shuffled[:, None], real.masks, cfg)["roi"] != t["roi"]) < 1e-3
    changed = (shuffled != t["gray"]).mean(axis=(1, 2)) / np.maximum(t["roi"].mean(axis=(1, 2)), 1e-9)
    assert np.median(changed) > 0.5


# ------------------------------------------------------------------------------ known answers
def _z(metrics: dict) -> dict[str, float]:
    return {name: metric_z(name, metrics[name]) for name in COMPONENTS}


def test_real_vs_real_is_within_the_null(cfg, halves):
    res = runner.run_family(structure, *halves, cfg)["metrics"]
    assert set(res) == {"symmetry_real", "symmetry_synth", *COMPONENTS, "outline_solidity_ratio"}
    assert all(z < 2.5 for z in _z(res).values()), _z(res)
    for name in (*COMPONENTS, "outline_solidity_ratio"):
        assert res[name]["ci_low"] <= 1.0 <= res[name]["ci_high"] or abs(res[name]["value"] - 1) < 0.1, name


def test_tiles_permuted_within_the_brain_are_flagged_and_a_mirror_is_not(cfg, halves):
    real, other = halves
    t = tissues(other.images, other.masks, cfg)
    shuffled = structure.permute_tiles(t["gray"], t["roi"], 4, np.random.default_rng(0))[:, None]
    tiles = runner.run_family(structure, real, ImageSet(shuffled, other.masks, other.subject), cfg)["metrics"]
    z = _z(tiles)
    assert tiles["asymmetry_ratio"]["value"] > 1.3 and z["asymmetry_ratio"] > 5, z
    assert tiles["midscale_band_ratio"]["value"] > 1.1 and z["midscale_band_ratio"] > 3, z
    plain = runner.run_family(structure, real, other, cfg)["metrics"]
    for name in ("outline_roughness_ratio", "outline_solidity_ratio"):  # the outline is kept
        assert tiles[name]["value"] == pytest.approx(plain[name]["value"], abs=0.02)

    mirrored = ImageSet(np.ascontiguousarray(other.images[..., ::-1]), other.masks[..., ::-1], other.subject)
    f, f_m = (structure.features(s.images, s.masks, cfg) for s in (other, mirrored))
    np.testing.assert_allclose(f_m["symmetry"], f["symmetry"], atol=1e-4, equal_nan=True)
    mirror = runner.run_family(structure, real, mirrored, cfg)["metrics"]
    for name in (*COMPONENTS, "outline_solidity_ratio"):
        assert mirror[name]["value"] == pytest.approx(plain[name]["value"], abs=2e-3), name
