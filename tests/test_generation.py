"""Generation: spec parsing, per-sample determinism, samples.npz contract, CLI errors."""

import json

import numpy as np
import pytest
import torch
from conftest import write_random_checkpoint

from jsddpm.cli import main
from jsddpm.config import load_config
from jsddpm.errors import UserError
from jsddpm.generation import (
    Checkpoint,
    Condition,
    expand,
    parse_spec,
    sample_conditions,
)

pytestmark = pytest.mark.usefixtures("one_thread")


SIZE = 16
TINY = [f"data.image_size={SIZE}", "data.n_zbins=3", "model.base_channels=8", "model.channel_mult=[1,2]",
        "model.attention_resolutions=[8]", "model.attention_head_dim=8", "model.num_classes=2",
        "model.prior=concat", "diffusion.timesteps=50", "diffusion.self_conditioning_prob=0.5",
        "sample.steps=4", "sample.sampler=ddpm", "sample.guidance_scale=2.0", "sample.device=cpu"]
SPACING = [1.5, 2.0, 3.0]  # the training cache's voxel spacing (x, y, z) in mm, as checkpoints record it


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint as `jsddpm train` writes it, around a randomly perturbed tiny network."""
    priors = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt", load_config(None, TINY), 0.2,
                                   ["normal", "abnormal"], priors, SPACING)


def test_spec_forms_give_counts_per_condition():
    assert parse_spec(None, 2, 2, default_count=3) == [Condition(z, c, 3) for z in range(2) for c in range(2)]
    compact = {"count": 2, "zbins": [0, 2], "overrides": [{"label": "abnormal", "count": 5},
                                                          {"zbin": 2, "label": 0, "count": 0}]}
    assert parse_spec(compact, 3, 2, ["normal", "abnormal"]) == [
        Condition(0, 0, 2), Condition(0, 1, 5), Condition(2, 1, 5)]
    detailed = [{"zbin": 1, "label": 1, "count": 2}, {"zbin": 0, "label": 0, "count": 1}]
    assert parse_spec(detailed, 3, 2) == [Condition(0, 0, 1), Condition(1, 1, 2)]
    zbins, labels, index = expand(parse_spec(detailed, 3, 2))
    assert zbins.tolist() == [0, 1, 1] and labels.tolist() == [0, 1, 1] and index.tolist() == [0, 0, 1]
    for bad, needle in [([{"zbin": 3, "label": 0, "count": 1}], "'zbin' must be an integer"),
                        ([{"zbin": 0, "label": 2, "count": 1}], "not a class index"),
                        ({"count": -1}, "'count' must be"), ({"cuont": 1}, "unknown key")]:
        with pytest.raises(UserError, match=needle):
            parse_spec(bad, 3, 2)


def test_samples_do_not_depend_on_batch_size_or_order(checkpoint):
    ckpt = Checkpoint.load(checkpoint)
    net, cfg = ckpt.model(), ckpt.config
    zbins, labels, index = expand(parse_spec({"count": 2, "zbins": [0, 2]}, 3, 2))
    one = sample_conditions(net, cfg, ckpt, zbins, labels, index, batch_size=1)
    perm = np.random.default_rng(0).permutation(len(zbins))
    four = sample_conditions(net, cfg, ckpt, zbins[perm], labels[perm], index[perm], batch_size=4)
    # float32 convolutions pick their kernels by batch size, so round-off differs (~1e-5 per call, carried
    # through the sampler's steps); a wrong condition or seed per sample would differ by O(0.1).
    np.testing.assert_allclose(four[:, :-1], one[perm][:, :-1], atol=2e-4)
    # the mask channel is thresholded at 0: round-off may flip a pixel that sits on the threshold, no more
    assert (four[:, -1] != one[perm][:, -1]).mean() < 1e-3
    assert one.std(axis=0).mean() > 0.01  # different conditions / indices give different samples
    assert set(np.unique(one[:, -1])) <= {-1.0, 1.0}


def test_generate_cli_writes_the_samples_contract(checkpoint, tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"count": 1, "overrides": [{"zbin": 1, "label": "abnormal", "count": 2}]}))
    out = tmp_path / "gen"
    assert main(["generate", "--ckpt", str(checkpoint), "--out", str(out), "--spec", str(spec),
                 "sample.batch_size=3", "sample.export_nifti=true", "sample.seed=7", "sample.device=cpu,cpu"]) == 0
    with np.load(out / "samples.npz") as f:
        images, zbin, label, seed, index = f["images"], f["zbin"], f["label"], f["seed"], f["index"]
        np.testing.assert_allclose(f["z"], (zbin + 0.5) / 3)  # conditioned on the z-bin centre
    assert images.shape == (7, 2, SIZE, SIZE) and images.dtype == np.float32
    assert images.min() >= -1 and images.max() <= 1 and set(np.unique(images[:, 1])) <= {-1.0, 1.0}
    assert zbin.tolist() == [0, 0, 1, 1, 1, 2, 2] and label.tolist() == [0, 1, 0, 1, 1, 0, 1]
    assert len(set(seed.tolist())) == 7
    for name in ("grid_normal.png", "grid_abnormal.png", "images.nii.gz", "masks.nii.gz", "versions.json"):
        assert (out / name).is_file(), name
    saved = load_config(out / "config.yaml")
    assert saved.sample.seed == 7 and saved.diffusion.prediction_type == "sample" and saved.loss.p == 1.5
    # drawn in two processes ("GPUs"), every other sample each: the same as drawn in one
    ckpt = Checkpoint.load(checkpoint)
    net = ckpt.model()
    np.testing.assert_allclose(images, sample_conditions(net, saved, ckpt, zbin, label, index), atol=1e-5)

    assert main(["generate", "--ckpt", str(checkpoint), "--out", str(out)]) == 2  # exists, not empty
    assert main(["generate", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")]) == 2
    (tmp_path / "bad.ckpt").write_bytes(b"\x00garbage")
    assert main(["generate", "--ckpt", str(tmp_path / "bad.ckpt"), "--out", str(tmp_path / "x")]) == 2
    assert main(["generate", "--ckpt", str(checkpoint), "--out", str(tmp_path / "x"), "model.base_channels=4"]) == 2
    assert main(["generate", "--ckpt", str(checkpoint), "--out", str(tmp_path / "x"), "sample.steps=0"]) == 2
    assert main(["generate", "--ckpt", str(checkpoint), "--out", str(tmp_path / "x"), "sample.device=gpu7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("jsddpm generate: error:") for line in err)
    assert not (tmp_path / "x").exists()


def test_compact_override_without_an_axis_keeps_the_specs_own_zbins_and_labels():
    # an override that names neither z-bin nor class changes the spec's own conditions, re-adding none
    assert parse_spec({"count": 1, "zbins": [1], "labels": [1], "overrides": [{"count": 3}]}, 3, 2) == [
        Condition(1, 1, 3)]
    assert parse_spec({"zbins": [0], "overrides": [{"label": 1, "count": 2}]}, 3, 2, default_count=1) == [
        Condition(0, 0, 1), Condition(0, 1, 2)]
    assert parse_spec({"labels": [0], "overrides": [{"zbin": 2, "count": 5}]}, 3, 2, default_count=1) == [
        Condition(0, 0, 1), Condition(1, 0, 1), Condition(2, 0, 5)]


def test_nifti_export_is_gzip_ras_at_the_cache_spacing_and_holds_the_samples(checkpoint, tmp_path):
    import gzip

    import nibabel as nib

    from jsddpm.data.volumes import load_nifti

    out = tmp_path / "gen"
    assert main(["generate", "--ckpt", str(checkpoint), "--out", str(out), "sample.n_per_condition=1",
                 "sample.export_nifti=true"]) == 0
    with np.load(out / "samples.npz") as f:
        images = f["images"]
    n = len(images)
    for name, expected in (("images.nii.gz", images[:, 0]), ("masks.nii.gz", (images[:, 1] > 0).astype(np.uint8))):
        path = out / name
        assert gzip.decompress(path.read_bytes())[344:348] == b"n+1\x00"  # real gzip of a NIfTI-1 file
        nii = nib.load(str(path))
        assert nib.aff2axcodes(nii.affine) == ("R", "A", "S")
        np.testing.assert_allclose(nii.header.get_zooms()[:3], SPACING)
        data = np.asarray(nii.dataobj)
        assert data.shape == (SIZE, SIZE, n) and data.dtype == expected.dtype
        # world orientation: slice row 0 is the most anterior (largest y), column 0 the subject's left (smallest x)
        x, y = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")  # voxel indices along x, y
        world = nii.affine @ np.stack([x.ravel(), y.ravel(), np.zeros(x.size), np.ones(x.size)])
        rows = np.rint((world[1].max() - world[1]) / SPACING[1]).astype(int)
        cols = np.rint((world[0] - world[0].min()) / SPACING[0]).astype(int)
        for k in range(n):
            np.testing.assert_array_equal(data[x.ravel(), y.ravel(), k], expected[k][rows, cols])
        ours, affine = load_nifti(path, "image")  # our own loader reads it back, in RAS
        np.testing.assert_array_equal(ours, data.astype(np.float32))
        np.testing.assert_allclose(affine, nii.affine)


def _one_line_error(capsys, needle: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jsddpm generate: error:") and needle in err[0], err


def test_generate_bad_specs_and_outputs_end_in_one_line(checkpoint, tmp_path, capsys, monkeypatch):
    base = ["generate", "--ckpt", str(checkpoint)]
    for bad, needle in (({"count": 1, "zbins": 3}, "'zbins' must be a list"),
                        ({"conditions": 5}, "'conditions' must be a list"),
                        ({"labels": "abnormal"}, "'labels' must be a list")):
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps(bad))
        assert main([*base, "--out", str(tmp_path / "x"), "--spec", str(spec)]) == 2
        _one_line_error(capsys, needle)
    existing = tmp_path / "file.txt"
    existing.write_text("keep me")
    assert main([*base, "--out", str(existing)]) == 2
    _one_line_error(capsys, "is a file")
    assert existing.read_text() == "keep me"
    # --out . --overwrite would have to rename the working folder: refused before sampling, nothing stranded
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    assert main([*base, "--out", ".", "--overwrite", "sample.n_per_condition=1"]) == 2
    _one_line_error(capsys, "working folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "spec.json", "work"]
    assert [p.name for p in work.iterdir()] == ["notes.txt"]


def test_generate_refuses_non_finite_weights_and_outputs_writing_nothing(checkpoint, tmp_path, capsys,
                                                                        monkeypatch):
    ckpt = torch.load(checkpoint, weights_only=True)
    name = next(k for k in ckpt["state_dict"] if k.startswith("ema.module.") and k.endswith("weight"))
    ckpt["state_dict"][name] = torch.full_like(ckpt["state_dict"][name], float("nan"))
    nan_ckpt = tmp_path / "nan.ckpt"
    torch.save(ckpt, nan_ckpt)
    out = tmp_path / "gen"
    assert main(["generate", "--ckpt", str(nan_ckpt), "--out", str(out)]) == 2
    _one_line_error(capsys, str(nan_ckpt))
    assert not out.exists()
    # finite weights whose output is not finite (e.g. overflow): refused after sampling, nothing written
    import jsddpm.generation.sampling as sampling

    monkeypatch.setattr(sampling, "sample_batch", lambda *a, **k: torch.full((len(a[4]), 2, SIZE, SIZE), float("nan")))
    assert main(["generate", "--ckpt", str(checkpoint), "--out", str(out), "sample.n_per_condition=1"]) == 2
    _one_line_error(capsys, str(checkpoint))
    assert list(tmp_path.iterdir()) == [nan_ckpt]
