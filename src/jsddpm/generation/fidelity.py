"""The fidelity filter: each synthetic pair scored by the reference segmenter, redrawn until it agrees.

A pair's fidelity is the Dice between its mask and the reference segmenter's prediction on its image
(`segmentation.pair_dice`: 1.0 when both are empty, 0 when only one is; so a lesion-free pair scores 1
when the segmenter sees no lesion in its image and 0 when it does). The reference segmenter is the one of
the checkpoint's training cache: trained once on that cache's training split by
`segmentation.reference_segmenter` and stored in `segmentation.segmenter_store(cache)` (`<cache>/segmenters/`,
or the user's cache folder for a read-only cache), where the pairing and utility diagnostics find the same
file.

`draw_faithful`: draw 0 of every requested pair uses the pair's own seed, so a pair kept at its first draw
is exactly the pair of an unfiltered run; a pair scoring below sample.min_fidelity is drawn again with
seed derive_seed(seed, RETRY_KEY, draw) (its draw-specific choices, e.g. noise and mask placement, change;
its conditions do not), at most sample.fidelity_tries draws in all. Pairs that never reach the threshold
are dropped with a printed warning (a partial set: the work done is kept, and samples.npz / fidelity.csv
say what was asked, drawn and kept); only a run that keeps no pair at all is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

RETRY_KEY = 1013  # salt of the redraws' seeds


@dataclass
class FaithfulDraws:
    """What `draw_faithful` kept: `arrays` (the draw's per-pair arrays, `images` among them) of the kept
    pairs in requested order, `kept` (their positions in the request), `seeds` and `attempt` (the draw
    each kept pair comes from), `fidelity` (their scores; None when not scored) and `log` (one entry per
    draw made: position, attempt, seed, fidelity, kept)."""

    arrays: dict[str, np.ndarray]
    kept: np.ndarray
    seeds: np.ndarray
    attempt: np.ndarray
    fidelity: np.ndarray | None
    log: dict[str, np.ndarray]
    requested: int
    threshold: float | None

    @property
    def keep_rate(self) -> float:
        """Kept pairs / draws made (1 without a threshold)."""
        return len(self.kept) / max(len(self.log["position"]), 1)

    def fields(self) -> dict[str, np.ndarray]:
        """The samples.npz fields of the scores: `fidelity` and `fidelity_attempt` per pair, 0-d
        `min_fidelity` (NaN: not filtered), `fidelity_keep_rate`, `fidelity_requested`; {} when unscored."""
        if self.fidelity is None:
            return {}
        return {"fidelity": self.fidelity.astype(np.float64), "fidelity_attempt": self.attempt.astype(np.int64),
                "min_fidelity": np.array(np.nan if self.threshold is None else float(self.threshold)),
                "fidelity_keep_rate": np.array(self.keep_rate), "fidelity_requested": np.array(self.requested)}

    def summary(self) -> str:
        scores = self.log["fidelity"]
        text = (f"fidelity: median {np.median(scores):.3f} over {len(scores)} draws" if len(scores) else "fidelity:")
        if self.threshold is not None:
            text += (f"; kept {len(self.kept)} of {self.requested} requested pairs at >= {self.threshold:g} "
                     f"(keep rate {self.keep_rate:.2f} of draws)")
        return text


def retry_seeds(seeds: np.ndarray, attempt: int) -> np.ndarray:
    """The seeds of draw `attempt` (0: the pairs' own seeds)."""
    from ..seeding import derive_seed

    if attempt == 0:
        return np.asarray(seeds, np.int64)
    return np.array([derive_seed(int(s), RETRY_KEY, attempt) for s in seeds], np.int64)


def draw_faithful(draw: Callable[[np.ndarray, np.ndarray], dict], seeds: np.ndarray,
                  score: Callable[[np.ndarray], np.ndarray] | None = None, threshold: float | None = None,
                  tries: int = 1, progress: Callable[[str], None] | None = None,
                  threshold_key: str = "sample.min_fidelity") -> FaithfulDraws:
    """Draw every requested pair (`draw(positions, seeds) -> {"images": (n, C+1, H, W), ...}` per-pair
    arrays for those positions of the request); with `score` ((n, C+1, H, W) -> (n,) fidelity) score each
    draw, and with a `threshold` redraw the pairs below it up to `tries` draws in all (module docstring).
    Raises UserError when a threshold keeps no pair (`threshold_key`: the config key messages name)."""
    seeds = np.asarray(seeds, np.int64)
    pending = np.arange(len(seeds))
    rounds = int(tries) if threshold is not None else 1
    parts, log = [], {k: [] for k in ("position", "attempt", "seed", "fidelity", "kept")}
    for attempt in range(rounds):
        if len(pending) == 0:
            break
        draw_seeds = retry_seeds(seeds[pending], attempt)
        arrays = draw(pending, draw_seeds)
        scores = np.asarray(score(arrays["images"]), np.float64) if score is not None else None
        passed = np.ones(len(pending), bool) if threshold is None else scores >= threshold
        for key, value in (("position", pending), ("attempt", np.full(len(pending), attempt)), ("seed", draw_seeds),
                           ("fidelity", scores if scores is not None else np.full(len(pending), np.nan)),
                           ("kept", passed)):
            log[key].append(value)
        parts.append((pending[passed], draw_seeds[passed], np.full(int(passed.sum()), attempt),
                      None if scores is None else scores[passed], {k: v[passed] for k, v in arrays.items()}))
        if threshold is not None and progress is not None:
            progress(f"fidelity: draw {attempt + 1}: {int(passed.sum())} of {len(pending)} pairs >= {threshold:g}")
        pending = pending[~passed]
    log = {k: np.concatenate(v) for k, v in log.items()}
    kept = np.concatenate([p[0] for p in parts])
    if len(kept) == 0:
        raise UserError(f"{threshold_key}={threshold}: no pair of {len(seeds)} reached it in "
                        f"{rounds} draw(s) each (best {np.nanmax(log['fidelity']):.3f}); lower {threshold_key} "
                        "or raise sample.fidelity_tries")
    order = np.argsort(kept, kind="stable")
    result = FaithfulDraws(
        arrays={k: np.concatenate([p[4][k] for p in parts])[order] for k in parts[0][4]},
        kept=kept[order], seeds=np.concatenate([p[1] for p in parts])[order],
        attempt=np.concatenate([p[2] for p in parts])[order],
        fidelity=None if score is None else np.concatenate([p[3] for p in parts])[order],
        log=log, requested=len(seeds), threshold=threshold)
    if len(pending):
        print(f"warning: {len(pending)} of {len(seeds)} requested pairs never reached {threshold_key}="
              f"{threshold:g} in {rounds} draws each and were dropped: writing {len(kept)} pairs (keep rate "
              f"{result.keep_rate:.2f}; raise sample.fidelity_tries or lower the threshold for more)", flush=True)
    return result


# ------------------------------------------------------------------------------------ scoring
def reference_for(cache, cfg, progress: Callable[[str], None] | None = None):
    """The reference segmenter of `cache` (a `SliceCache`) under cfg.diagnostics, from its one store."""
    from ..segmentation import reference_segmenter, segmenter_store

    return reference_segmenter(cache, cfg, segmenter_store(cache.root), progress)


def pair_fidelity(segmenter, images: np.ndarray) -> np.ndarray:
    """(N,) fidelity of pairs (N, C+1, H, W) in [-1, 1], mask last: Dice(segmenter on the image, mask)."""
    from ..segmentation import pair_dice

    return pair_dice(segmenter.predict(np.asarray(images[:, :-1], np.float32)), images[:, -1] > 0)


def fidelity_scorer(cache, cfg, ckpt) -> Callable[[np.ndarray], np.ndarray] | None:
    """The pair scorer when sample.min_fidelity or sample.score_fidelity asks for one (None otherwise):
    refused in one line for a model that draws no masks."""
    if cfg.sample.min_fidelity is None and not cfg.sample.score_fidelity:
        return None
    if not ckpt.joint:
        raise UserError(f"{ckpt.path}: sample.min_fidelity / sample.score_fidelity score image + mask pairs, "
                        "but this model draws images only (model.joint_mask=false)")
    segmenter = reference_for(cache, cfg, progress=lambda msg: print(msg, flush=True))
    print(f"fidelity: reference segmenter {segmenter.info.get('path')} ({segmenter.info.get('source')})", flush=True)
    return lambda images: pair_fidelity(segmenter, images)


def write_fidelity_csv(path: Path, result: FaithfulDraws, columns: dict[str, np.ndarray]) -> None:
    """fidelity.csv: one row per draw made, in draw order: `position` (in the request), the request's
    `columns` at that position (e.g. zbin, label, index), `attempt`, `seed`, `fidelity`, `kept` (0/1)."""
    import csv
    import io

    from ..io import atomic_write_text

    log = result.log
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["position", *columns, "attempt", "seed", "fidelity", "kept"])
    for k, pos in enumerate(log["position"]):
        writer.writerow([int(pos), *(int(v[pos]) for v in columns.values()), int(log["attempt"][k]),
                         int(log["seed"][k]), f"{log['fidelity'][k]:.6g}", int(log["kept"][k])])
    atomic_write_text(path, buf.getvalue())
