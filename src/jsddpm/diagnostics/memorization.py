"""Family 11, memorisation: nearest-neighbour distance to the generator's TRAINING images, synthetic
versus held-out real. `memorization_ratio` = median NN distance of synthetic samples / median NN
distance of held-out real samples; below 1, samples sit closer to training images than new real
images do (copies give 0).

Inputs: `features(images, masks, cfg)` is called for each of the three sets (train, held-out real,
synthetic) and holds block-mean grayscale vectors (longer side <= `cfg.memorization_max_side`; an
exact copy stays an exact copy). `compare(real, synth, cfg, train=train_features)` takes the train set's
features as a keyword (the runner passes it: the registry says memorisation needs it). `compute(train, real,
synth, cfg)` does all of it from arrays. The NN distance of a sample depends only on its content and
the train set, so compare memoises it per content hash: a bootstrap resample costs no new search.
"""

from __future__ import annotations

import zlib

import numpy as np

from .common import Features, metric
from .regions import downsample, gray

NAME = "memorization"
CHUNK = 512

_NN_CACHE: dict = {"train": None, "dist": {}}  # train-set key -> {content hash: NN distance}


def features(images: np.ndarray, masks: np.ndarray | None, cfg) -> Features:
    small = downsample(gray(images), cfg.memorization_max_side)
    vectors = np.ascontiguousarray(small.reshape(len(small), -1), dtype=np.float32)
    content = np.array([zlib.crc32(v) << 20 ^ zlib.adler32(v) for v in vectors], dtype=np.int64)
    return Features(len(vectors), {"vectors": vectors, "content": content})


def nn_distances(queries: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Euclidean distance from each query row to its nearest train row (per pixel RMS units)."""
    train_sq = np.einsum("ij,ij->i", train, train, dtype=np.float64)
    out = np.empty(len(queries))
    for s in range(0, len(queries), CHUNK):
        q = queries[s : s + CHUNK]
        d2 = np.einsum("ij,ij->i", q, q, dtype=np.float64)[:, None] + train_sq[None, :] - 2.0 * (q @ train.T)
        out[s : s + CHUNK] = np.sqrt(np.maximum(d2.min(axis=1), 0.0) / train.shape[1])
    return out


def _cached_nn(f: Features, train: Features) -> np.ndarray:
    key = (train["vectors"].shape, zlib.crc32(train["content"].tobytes()))
    if _NN_CACHE["train"] != key:
        _NN_CACHE.update(train=key, dist={})
    cache = _NN_CACHE["dist"]
    missing = np.unique(f["content"][[c not in cache for c in f["content"].tolist()]])
    if len(missing):
        first = {c: i for i, c in reversed(list(enumerate(f["content"].tolist())))}
        rows = np.array([first[c] for c in missing.tolist()])
        cache.update(zip(missing.tolist(), nn_distances(f["vectors"][rows], train["vectors"]).tolist()))
    return np.array([cache[c] for c in f["content"].tolist()])


def compare(real: Features, synth: Features, cfg, train: Features | None = None) -> dict[str, dict]:
    if train is None:
        raise ValueError("memorization.compare needs the training set's features: compare(..., train=...)")
    if train.n == 0 or real.n == 0 or synth.n == 0:
        return {}
    dr, ds = np.median(_cached_nn(real, train)), np.median(_cached_nn(synth, train))
    return {"memorization_ratio": metric(ds / dr if dr > 0 else np.nan, dr, ds)}


def compute(train_images: np.ndarray, real_images: np.ndarray, synth_images: np.ndarray, cfg) -> dict[str, dict]:
    """The memorisation metric straight from (N, C, H, W) arrays of the three sets."""
    return compare(features(real_images, None, cfg), features(synth_images, None, cfg), cfg,
                   train=features(train_images, None, cfg))


def detail(real: Features, synth: Features, cfg, train: Features | None = None) -> dict:
    """Figure data: quantiles (5 .. 95 %) of the NN distances of both sets."""
    if train is None or train.n == 0:
        return {}
    q = np.linspace(5, 95, 19)
    return {"nn_distance_quantiles": {"x": q.tolist(), "real": np.percentile(_cached_nn(real, train), q).tolist(),
                                      "synthetic": np.percentile(_cached_nn(synth, train), q).tolist()}}
