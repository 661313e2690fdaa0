"""Family 12, feature distances: KID (unbiased polynomial-kernel MMD^2, degree 3) and Frechet distance
between feature vectors of the two sets.

Extractors (`cfg.feature_extractor`), both fed float32 images in [-1, 1] as stored (never uint8):
- "builtin": a fixed random-weight convolutional net, deterministic from `cfg.seed` (weights drawn
  with numpy), no pretrained weights: three stride-2 3 x 3 convolutions with ReLU (8, 16, 32
  channels, zero-mean kernels) on the grayscale image (mean of the image channels); features = log of
  the per-channel mean and standard deviation of every layer (112 values). Having no natural scale,
  they are z-scored (mean and SD of both sets together) before the KID kernel; FD uses them as they
  are. Good for comparing runs with each other, not with published FID / KID numbers.
- a path to a local TorchScript file: `torch.jit.load`, called on batches (N, C, H, W) with C =
  `cfg.feature_extractor_channels` (grayscale repeated; 0 = the stored channels); its output is
  flattened per sample. Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .common import Features, metric, one_blas_thread
from .morphology import capped_rows, distinct_rows, poly_mmd2_unbiased
from .regions import gray

NAME = "feature_distance"
BUILTIN_CHANNELS = (8, 16, 32)
BATCH = 128
LOG_FLOOR = 1e-3  # builtin features are log(activation statistic + LOG_FLOOR)


def builtin_weights(seed: int) -> list[np.ndarray]:
    """He-normal 3 x 3 kernels for BUILTIN_CHANNELS, from a fixed numpy generator."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 20240512]))
    weights, c_in = [], 1
    for c_out in BUILTIN_CHANNELS:
        w = rng.standard_normal((c_out, c_in, 3, 3))
        w -= w.mean(axis=(2, 3), keepdims=True)  # zero-mean kernels: edge and texture detectors, not brightness
        w *= np.sqrt(2.0 / (9 * c_in)) / w.std()
        weights.append(w.astype(np.float32))
        c_in = c_out
    return weights


def builtin_features(images: np.ndarray, seed: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    weights = [torch.from_numpy(w) for w in builtin_weights(seed)]
    g = gray(images)
    out = []
    with torch.no_grad():
        for s in range(0, len(g), BATCH):
            x = torch.from_numpy(np.ascontiguousarray(g[s : s + BATCH]))[:, None]
            stats = []
            for w in weights:
                x = F.relu(F.conv2d(x, w, stride=2, padding=1))
                stats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
            # logs: a change in texture scales activations, so it shows as a shift, whatever the anatomy
            out.append(torch.log(torch.cat(stats, dim=1) + LOG_FLOOR).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 2 * sum(BUILTIN_CHANNELS)))


def torchscript_features(images: np.ndarray, path: str, channels: int) -> np.ndarray:
    import torch

    if not Path(path).is_file():
        raise UserError(f"{path}: feature extractor not found; set diagnostics.feature_extractor to 'builtin' "
                        "or to a local TorchScript file")
    try:
        net = torch.jit.load(path, map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: not a TorchScript file ({reason}); save the extractor with torch.jit.save") from exc
    x_all = images if channels <= 0 else np.repeat(gray(images)[:, None], channels, axis=1)
    out = []
    with torch.no_grad():
        for s in range(0, len(x_all), BATCH):
            x = torch.from_numpy(np.ascontiguousarray(x_all[s : s + BATCH], dtype=np.float32))
            out.append(net(x).reshape(len(x), -1).double().numpy())
    return np.concatenate(out)


def extract(images: np.ndarray, cfg) -> np.ndarray:
    if cfg.feature_extractor == "builtin":
        return builtin_features(images, cfg.seed)
    return torchscript_features(images, cfg.feature_extractor, cfg.feature_extractor_channels)


def features(images: np.ndarray, masks: np.ndarray | None, cfg) -> Features:
    f = extract(images, cfg)
    return Features(len(f), {"features": f, "row_id": np.arange(len(f))})


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)); the trace of the root from the
    eigenvalues of L^T S_b L with S_a = L L^T (symmetric, so no complex sqrtm)."""
    with one_blas_thread():
        ca, cb = a - a.mean(axis=0), b - b.mean(axis=0)
        mu = a.mean(axis=0) - b.mean(axis=0)
        sa, sb = ca.T @ ca / (len(a) - 1), cb.T @ cb / (len(b) - 1)
        eps = 1e-10 * max(np.trace(sa), 1e-12) / len(sa)
        chol = np.linalg.cholesky(sa + eps * np.eye(len(sa)))
        eig = np.linalg.eigvalsh(chol.T @ sb @ chol)
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


def compare(real: Features, synth: Features, cfg) -> dict[str, dict]:
    a, b = real["features"], synth["features"]
    if len(a) < 2 or len(b) < 2:
        return {}
    ka, kb = a, b
    if cfg.feature_extractor == "builtin":  # no natural scale: z-score with both sets' mean and SD for KID
        both = np.concatenate([a, b])
        mean, sd = both.mean(axis=0), both.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        ka, kb = (a - mean) / sd, (b - mean) / sd
    kid = poly_mmd2_unbiased(ka[capped_rows(distinct_rows(real["row_id"]))],
                             kb[capped_rows(distinct_rows(synth["row_id"]))])
    return {"kid": metric(kid), "fd": metric(frechet_distance(a, b))}
