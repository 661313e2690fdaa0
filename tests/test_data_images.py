"""Folders of 2D images -> slice cache (1 and 3 channels), resize on the fly, and bad image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jsddpm.cli import main
from jsddpm.config import load_config
from jsddpm.data.cache import load_cache
from jsddpm.data.dataset import SliceDataset


def write_folder(root: Path, mode: str, size=(30, 20), per_class: int = 4) -> dict[str, np.ndarray]:
    """ROOT/abnormal and ROOT/normal with constant-valued images; returns path -> pixel value(s)."""
    values = {}
    for c, name in enumerate(("normal", "abnormal")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            value = np.array([40 * i + 10 * c, 255 - 30 * i, 60 + 20 * c])[: 3 if mode == "RGB" else 1]
            pixels = np.broadcast_to(value.astype(np.uint8), (size[1], size[0], len(value)))
            img = Image.fromarray(pixels.copy() if mode == "RGB" else pixels[..., 0].copy(), mode=mode)
            suffix = (".png", ".jpg", ".tif", ".png")[i] if mode == "L" else ".png"
            img.save(root / name / f"img{i}{suffix}", **({"quality": 100} if suffix == ".jpg" else {}))
            values[f"{name}/img{i}{suffix}"] = value
    return values


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3)])
def test_image_folder_cache_for_one_and_three_channels(tmp_path, capsys, mode, channels):
    values = write_folder(tmp_path / "root", mode)
    out = tmp_path / "cache"
    assert main(["cache", "--images", str(tmp_path / "root"), "--out", str(out), "data.image_size=16"]) == 0
    assert "8 slices" in capsys.readouterr().out
    cache = load_cache(out)
    assert cache.images.shape == (8, channels, 16, 16) and cache.masks is None
    assert cache.stats["classes"] == ["abnormal", "normal"] and cache.stats["channels"] == channels
    for row, path in enumerate(cache.index["path"]):
        expected = values[str(path)] / 127.5 - 1.0  # 8-bit files: 0 -> -1, 255 -> +1
        atol = 0.05 if str(path).endswith(".jpg") else 1e-5
        np.testing.assert_allclose(cache.images[row].mean(axis=(1, 2)), expected, atol=atol)
        assert cache.index["label"][row] == ["abnormal", "normal"].index(str(path).split("/")[0])
    assert cache.joint([0]).shape == (1, channels, 16, 16)
    assert cache.priors.shape == (1, 16, 16) and cache.stats["n_zbins"] == 1

    # the resolution study's other way: read the original files and resize them when loading
    cfg = load_config(None, ["data.image_size=24", "data.resize_on_the_fly=true",
                             "data.augment.enabled=false"]).data
    dataset = SliceDataset(cache, None, cfg, train=True)
    item = dataset[3]
    assert item["x"].shape == (channels, 24, 24) and item["prior"].shape == (1, 24, 24)
    np.testing.assert_allclose(item["x"].mean(axis=(1, 2)).numpy(), cache.images[3].mean(axis=(1, 2)), atol=1e-4)


def test_native_size_cache_without_resize(tmp_path):
    write_folder(tmp_path / "root", "L", size=(12, 10))
    cfg_args = ["data.resize_images=false"]
    assert main(["cache", "--images", str(tmp_path / "root"), "--out", str(tmp_path / "c"), *cfg_args]) == 0
    assert load_cache(tmp_path / "c").images.shape == (8, 1, 10, 12)


def test_grayscale_files_in_an_rgb_set_are_replicated(tmp_path):
    root = tmp_path / "root"
    write_folder(root, "RGB")
    Image.fromarray(np.full((20, 30), 255, np.uint8), mode="L").save(root / "normal" / "gray.png")
    assert main(["cache", "--images", str(root), "--out", str(tmp_path / "c"), "data.image_size=8"]) == 0
    cache = load_cache(tmp_path / "c")
    row = int(np.flatnonzero(cache.index["path"] == "normal/gray.png")[0])
    np.testing.assert_allclose(cache.images[row], 1.0)


def _empty_class(root: Path) -> str:
    write_folder(root, "L")
    (root / "zz_empty").mkdir()
    return "zz_empty"


def _mixed_sizes(root: Path) -> str:
    write_folder(root, "L")
    Image.fromarray(np.zeros((7, 9), np.uint8), mode="L").save(root / "normal" / "odd.png")
    return "odd.png"


def _truncated_image(root: Path) -> str:
    write_folder(root, "L")
    data = (root / "normal" / "img0.png").read_bytes()
    (root / "normal" / "img0.png").write_bytes(data[:40])
    return "img0.png"


BAD_FOLDERS = {
    "class folder with no images": (_empty_class, [], "no .png/.jpg/.tif"),
    "mixed sizes without resize": (_mixed_sizes, ["data.resize_images=false"], "data.resize_images=true"),
    "unreadable image": (_truncated_image, [], "not a readable image"),
    "no image folder": (lambda root: "missing", [], "not found"),
    "split would be empty": (lambda root: write_folder(root, "L", per_class=1) and "root", [], "would be empty"),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_bad_image_folder_fails_cleanly(case, tmp_path, capsys):
    make, overrides, text = BAD_FOLDERS[case]
    root = tmp_path / "root"
    if case != "no image folder":
        expect_file = make(root)
    else:
        root, expect_file = tmp_path / "missing", "missing"
    out = tmp_path / "out" / "cache"
    assert main(["cache", "--images", str(root), "--out", str(out), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect_file in err and text in err, err
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())
