"""Family 2, wavelet: energy (mean squared detail coefficient) of the grayscale image (mean of the
image channels) per level and subband, one batched `pywt.wavedec2` over the sample axis.

Levels: `cfg.wavelet_levels` (0 = all), never beyond `pywt.dwt_max_level` for the image size, so the
coarsest level is not computed from boundary padding alone. Level 1 = finest. Subbands: LH = high-pass
along the height (horizontal edges, pywt's cH), HL = high-pass along the width (vertical edges, cV),
HH = diagonal (cD).
"""

from __future__ import annotations

import numpy as np
import pywt

from .common import Features, metric
from .regions import gray

NAME = "wavelet"
SUBBANDS = ("lh", "hl", "hh")  # order of pywt's (cH, cV, cD)
CHUNK = 256


def n_levels(shape: tuple[int, int], wavelet: str, requested: int) -> int:
    """Levels to compute: the requested number (0 = all) capped at the maximum valid for the size."""
    max_level = pywt.dwt_max_level(min(shape), pywt.Wavelet(wavelet).dec_len)
    return max_level if requested <= 0 else min(requested, max_level)


def features(images: np.ndarray, masks: np.ndarray | None, cfg) -> Features:
    g = gray(images)
    N = len(g)
    levels = n_levels(g.shape[1:], cfg.wavelet, cfg.wavelet_levels)
    energy = np.zeros((N, levels, 3))
    for s in range(0, N, CHUNK):
        if levels == 0:
            break
        coeffs = pywt.wavedec2(g[s : s + CHUNK], cfg.wavelet, level=levels, axes=(-2, -1))
        # coeffs[1] is the coarsest detail level (= level `levels`), coeffs[-1] the finest (level 1)
        for i, details in enumerate(coeffs[1:]):
            level = levels - i
            for b, c in enumerate(details):
                energy[s : s + CHUNK, level - 1, b] = np.mean(np.square(c, dtype=np.float64), axis=(-2, -1))
    return Features(N, {"energy": energy})


def compare(real: Features, synth: Features, cfg) -> dict[str, dict]:
    er, es = real["energy"].mean(axis=0), synth["energy"].mean(axis=0)
    out = {}
    for level in range(er.shape[0]):
        for b, name in enumerate(SUBBANDS):
            r, s = er[level, b], es[level, b]
            out[f"wavelet_{name}_l{level + 1}_ratio"] = metric(s / r if r > 0 else np.nan, r, s)
    return out


def detail(real: Features, synth: Features, cfg) -> dict:
    """Figure data: mean energy per level (finest first) and subband, flattened with labels in x."""
    levels = real["energy"].shape[1]
    return {"energy": {"x": [f"{b}_l{k + 1}" for k in range(levels) for b in SUBBANDS],
                       "real": real["energy"].mean(axis=0).ravel().tolist(),
                       "synthetic": synth["energy"].mean(axis=0).ravel().tolist()}}
