"""Shared pieces of the diagnostics: per-sample `Features` that a bootstrap or a real-vs-real draw can
index without recomputing anything, metric records, the one-thread contexts (BLAS, torch) and the
plain-data helpers (JSON-able values, CSV text)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Features:
    """Per-sample arrays (first axis = sample) plus ragged per-item arrays (e.g. one row per lesion)
    that belong to a sample through an `owner` vector.

    `take(idx)` returns the features of the samples `idx` (repeats allowed, as in a bootstrap);
    ragged rows follow their owners and are renumbered to the new sample positions.
    """

    n: int
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    ragged: dict[str, np.ndarray] = field(default_factory=dict)
    owner: np.ndarray | None = None  # (n_items,) sample index of each ragged row

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self.per_sample:
            return self.per_sample[key]
        return self.ragged[key]

    def __contains__(self, key: str) -> bool:
        return key in self.per_sample or key in self.ragged

    def take(self, idx) -> Features:
        idx = np.asarray(idx, dtype=np.int64)
        per = {k: v[idx] for k, v in self.per_sample.items()}
        if self.owner is None or not self.ragged:
            return Features(len(idx), per, {}, None)
        order = np.argsort(self.owner, kind="stable")
        counts = np.bincount(self.owner, minlength=self.n)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sel_counts = counts[idx]
        total = int(sel_counts.sum())
        # positions of each selected sample's rows in the owner-sorted order
        new_owner = np.repeat(np.arange(len(idx)), sel_counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(sel_counts) - sel_counts, sel_counts)
        rows = order[np.repeat(starts[idx], sel_counts) + offsets]
        rag = {k: v[rows] for k, v in self.ragged.items()}
        return Features(len(idx), per, rag, new_owner)


def metric(value, real=None, synthetic=None, **extra) -> dict:
    """One metric's record as `compare` returns it; the runner adds CI and null fields."""
    out = {"value": _f(value), "real": _f(real), "synthetic": _f(synthetic)}
    out.update(extra)
    return out


def absent(real=None, what: str = "lesions") -> dict:
    """A metric that cannot be computed because the synthetic set lacks something the real set has
    (`what`): severity counts it as a maximal deviation, never as missing."""
    return {"value": None, "real": _f(real), "synthetic": None, "absent_in_synthetic": what}


def _f(x):
    if x is None:
        return None
    return float(x)


@contextlib.contextmanager
def one_blas_thread():
    """`compare` re-runs on small matrices hundreds of times: multi-threaded BLAS only adds
    synchronisation there (100x slower on a busy 2-core machine), so those loops run single-threaded."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        yield
        return
    with threadpool_limits(limits=1):
        yield


def jsonable(obj):
    """numpy containers -> plain lists / floats (non-finite -> None), so results can be stored as JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(obj) -> str:
    """The JSON files' layout: indented, one trailing newline."""
    return json.dumps(obj, indent=1) + "\n"


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows as CSV text (None -> empty cell); columns default to the first row's keys."""
    columns = columns or (list(rows[0].keys()) if rows else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buf.getvalue()
