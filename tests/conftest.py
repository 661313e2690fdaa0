"""Shared fixtures: a tiny demo cohort (phantom) and its 64 px slice cache, built once per session; helpers
that write a checkpoint around a random tiny network and paint conspicuous lesions into brain slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def demo_phantom(tmp_path_factory) -> Path:
    """Folder with a 6-control + 4-patient phantom cohort (NIfTI + manifest.csv), seed 0."""
    from jsddpm.data.phantom import write_cohort

    out = tmp_path_factory.mktemp("demo_phantom")
    write_cohort(out, n_controls=6, n_patients=4, seed=0)
    return out


@pytest.fixture(scope="session")
def demo_cache(demo_phantom, tmp_path_factory) -> Path:
    """Slice cache folder of `demo_phantom` at 64 px, 10 z-bins (load it with jsddpm.data.cache.load_cache)."""
    from jsddpm.config import load_config
    from jsddpm.data.cache import build_volume_cache

    cfg = load_config(None, ["data.image_size=64", "data.n_zbins=10"])
    out = tmp_path_factory.mktemp("demo_cache") / "cache"
    build_volume_cache(demo_phantom / "manifest.csv", out, cfg)
    return out


@pytest.fixture
def one_thread(monkeypatch):
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the threads spin
    (measured: the training tests 4x slower with 2 threads). Child processes inherit OMP_NUM_THREADS."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_random_checkpoint(path: Path, cfg, scale: float, classes: list[str], priors, spacing_mm,
                            cache_fingerprint: str | None = None) -> Path:
    """A checkpoint as `jsddpm train` writes it (same weights as net and EMA), around the config's network
    with every parameter perturbed by `scale` x N(0, 1) (the UNet's zero-initialised output layer would
    otherwise make every prediction 0). Seeds torch with 0 first, so the weights depend on `cfg` only.
    `cache_fingerprint`: the training cache's, recorded as `jsddpm train` does (None: an older checkpoint)."""
    import torch

    from jsddpm.config import to_container
    from jsddpm.model import build_model

    torch.manual_seed(0)
    net = build_model(cfg, verbose=False)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn_like(p))
    state = net.state_dict()
    record = {"format": 1, "config": to_container(cfg), "classes": classes, "priors": torch.as_tensor(priors),
              "spacing_mm": spacing_mm}
    if cache_fingerprint is not None:
        record["cache_fingerprint"] = cache_fingerprint
    torch.save({"state_dict": {**{f"net.{k}": v for k, v in state.items()},
                               **{f"ema.module.{k}": v for k, v in state.items()}}, "jsddpm": record}, path)
    return path


def paint_lesions(images: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Half of the slices get one bright disc (radius 1.5-3 px) centred on a random brain pixel: lesions a
    segmenter that trains in seconds can learn (the phantom's own are too few and faint)."""
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
