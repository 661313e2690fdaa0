"""Family 9, mask morphology: per-lesion shape features of the mask channel and the distance between
the real and synthetic lesion feature sets.

Lesions are in-plane 8-connected components. Per lesion (vectorised over the batch with bincount):
area (pixels), perimeter and polygon area of the marching-squares contour at 0.5 (so a one-pixel lesion
has perimeter 2.83, not 4), circularity 4 pi polygon_area / perimeter^2, solidity area / convex hull
area of the pixel squares, extent area / bounding-box area, and the axis lengths and eccentricity of
the ellipse with the same second moments (skimage.measure.regionprops definitions).
`mask_mmd`: unbiased polynomial-kernel MMD^2 (degree 3, KID-style) between the standardised feature
sets (log1p of the size features), each resampled lesion counted once; per-feature Wasserstein-1;
mean lesion count per slice. The estimator is unbiased for independent sets. Every `features` call
numbers its lesions in a block of its own, so when both sides come from one set (the runner's
real-vs-real null resamples both from the real set) a lesion drawn into both sides is left out of the
cross term, as it is left out of each side's own term: without that the cross term would hold each
shared lesion paired with itself and bias the null downwards (a set against itself gives exactly 0).

Lesion rate and count (the sets' lesion burden, mask collapse included):
- `lesion_rate_diff`: per class (the samples' labels, when both sets have them; else one class), the
  fraction of slices carrying a lesion; the value is |synthetic - real| averaged over the classes
  present in both sets, each class counting once (a class-conditional generator must honour the
  rare lesion class as much as the common one; 0 = like real, 1 = every slice wrong);
  `real` / `synthetic` hold the overall fractions, `lesion_rate_diff_class<c>` the signed per-class
  differences.
- `lesion_count_ratio`: mean number of lesions per lesion-carrying slice, synthetic / real.
- `lesion_count_diff`: mean lesions per slice, synthetic - real.
When the real set has lesions and the synthetic set has none (or fewer than two for the MMD),
`mask_mmd` and `lesion_count_ratio` are recorded as absent in the synthetic set (no value), which
severity counts as a maximal deviation.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage, stats
from scipy.spatial import ConvexHull, QhullError

from .common import Features, absent, metric, one_blas_thread
from .regions import IN_PLANE_8, as_masks

NAME = "morphology"
LESION_FEATURES = ("area", "perimeter", "circularity", "solidity", "extent", "eccentricity",
                   "major_axis", "minor_axis")
LOG_FEATURES = ("area", "perimeter", "major_axis", "minor_axis")  # heavy-tailed sizes: log1p before MMD
_ID_BLOCKS = itertools.count()  # each features() call numbers its lesions from its own block
ID_BLOCK = 1 << 32

# marching squares on a 2 x 2 cell, indexed by the inside corners (bit 0 top-left, 1 top-right,
# 2 bottom-left, 3 bottom-right): contour length and enclosed area inside the cell. Diagonal pairs
# (6, 9) are joined, as 8-connectivity says they are one lesion.
_N_INSIDE = np.array([bin(c).count("1") for c in range(16)])
_CELL_LENGTH = np.select([_N_INSIDE % 2 == 1, np.isin(np.arange(16), (6, 9)), _N_INSIDE == 2],
                         [np.sqrt(0.5), 2 * np.sqrt(0.5), 1.0], 0.0)
_CELL_AREA = np.select([_N_INSIDE == 1, _N_INSIDE == 3, np.isin(np.arange(16), (6, 9)), _N_INSIDE == 2,
                        _N_INSIDE == 4], [1 / 8, 7 / 8, 3 / 4, 1 / 2, 1.0], 0.0)


def label_lesions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(masks, structure=IN_PLANE_8)


def lesion_table(masks: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-lesion features of an (N, H, W) bool stack and the sample index (owner) of each lesion."""
    labels, n = label_lesions(masks)
    if n == 0:
        return {k: np.zeros(0) for k in LESION_FEATURES}, np.zeros(0, dtype=np.int64)
    z, r, c = np.nonzero(labels)
    lab = labels[z, r, c] - 1
    area = np.bincount(lab, minlength=n).astype(np.float64)
    owner = np.zeros(n, dtype=np.int64)
    owner[lab] = z

    # second moments about the centroid -> ellipse axes (as regionprops)
    mean_r = np.bincount(lab, r, n) / area
    mean_c = np.bincount(lab, c, n) / area
    dr, dc = r - mean_r[lab], c - mean_c[lab]
    var_r = np.bincount(lab, dr * dr, n) / area
    var_c = np.bincount(lab, dc * dc, n) / area
    cov = np.bincount(lab, dr * dc, n) / area
    half_trace, root = (var_r + var_c) / 2, np.sqrt(((var_r - var_c) / 2) ** 2 + cov**2)
    l1, l2 = half_trace + root, np.maximum(half_trace - root, 0)
    eccentricity = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / np.where(l1 > 0, l1, 1), 0, 1)), 0.0)

    # marching-squares contour on the padded label stack: each 2 x 2 cell belongs to its one lesion
    code, corners = _cells(labels)
    cell_label = np.maximum.reduce(corners)
    edge = (code > 0) & (code < 15)
    cl = cell_label[edge] - 1
    perimeter = np.bincount(cl, _CELL_LENGTH[code[edge]], n)
    inner = cell_label[code == 15] - 1
    poly_area = np.bincount(cl, _CELL_AREA[code[edge]], n) + np.bincount(inner, minlength=n)

    boxes = ndimage.find_objects(labels)
    box_area = np.array([(s[1].stop - s[1].start) * (s[2].stop - s[2].start) for s in boxes], dtype=np.float64)
    table = {
        "area": area,
        "perimeter": perimeter,
        "circularity": 4 * np.pi * poly_area / np.maximum(perimeter, 1e-12) ** 2,
        "solidity": area / hull_areas(lab, r, c, n),
        "extent": area / box_area,
        "eccentricity": eccentricity,
        "major_axis": 4 * np.sqrt(l1),
        "minor_axis": 4 * np.sqrt(l2),
    }
    return table, owner


def _cells(labels: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Marching-squares code of every 2 x 2 cell of the zero-padded (N, H, W) stack (bits: inside
    corners, see _CELL_LENGTH) and the four corner views."""
    padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)))
    corners = (padded[:, :-1, :-1], padded[:, :-1, 1:], padded[:, 1:, :-1], padded[:, 1:, 1:])
    return sum((k > 0).astype(np.int64) << b for b, k in enumerate(corners)), corners


def contour_length(binary: np.ndarray) -> np.ndarray:
    """(N,) total marching-squares contour length of each image of an (N, H, W) bool stack (all its
    pieces together; the same lengths as the per-lesion perimeters)."""
    code, _ = _cells(binary)
    return _CELL_LENGTH[code].sum(axis=(1, 2))


def hull_areas(lab: np.ndarray, r: np.ndarray, c: np.ndarray, n: int) -> np.ndarray:
    """Convex hull area of each lesion's pixel squares (corners at +-0.5)."""
    order = np.argsort(lab, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(lab, minlength=n))])
    corner = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    pts = np.stack([r[order], c[order]], axis=1).astype(np.float64)
    out = np.empty(n)
    for k in range(n):
        p = pts[bounds[k] : bounds[k + 1]]
        if len(p) == 1:
            out[k] = 1.0
            continue
        lo, hi = p.min(axis=0), p.max(axis=0)
        if (hi - lo).min() == 0:  # a straight line of pixels: the hull is its bounding rectangle
            out[k] = float(np.prod(hi - lo + 1))
            continue
        try:
            out[k] = ConvexHull((p[:, None, :] + corner[None]).reshape(-1, 2)).volume
        except QhullError:
            out[k] = float(np.prod(hi - lo + 1))
    return out


def features(images: np.ndarray, masks: np.ndarray | None, cfg) -> Features:
    N = len(images)
    m = as_masks(masks, (N, *images.shape[-2:]))
    if m is None:
        empty = {k: np.zeros(0) for k in (*LESION_FEATURES, "lesion_id")}
        return Features(N, {"lesion_count": np.zeros(N)}, empty, np.zeros(0, dtype=np.int64))
    with_lesion = np.flatnonzero(m.reshape(N, -1).any(axis=1))
    table, owner = lesion_table(m[with_lesion])
    owner = with_lesion[owner]
    count = np.bincount(owner, minlength=N).astype(np.float64)
    # survives `take`, so a resample knows its repeats; unique across calls, so lesions of two different
    # sets never share an id
    table["lesion_id"] = next(_ID_BLOCKS) * ID_BLOCK + np.arange(len(owner))
    return Features(N, {"lesion_count": count}, table, owner)


def distinct_rows(ids: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each id. A bootstrap resample repeats rows, and a repeated
    row paired with itself inflates a U-statistic's within-set kernel sum; keeping each sampled row
    once makes the resample an unbiased (m-out-of-n) estimate instead."""
    return np.unique(ids, return_index=True)[1]


MMD_MAX_ROWS = 2000  # the kernel matrices are O(rows^2): a poor generator can emit thousands of specks


def capped_rows(rows: np.ndarray, limit: int = MMD_MAX_ROWS) -> np.ndarray:
    """At most `limit` rows, evenly spaced (deterministic): an unbiased MMD on a subset stays unbiased."""
    if len(rows) <= limit:
        return rows
    return rows[np.linspace(0, len(rows) - 1, limit).round().astype(np.int64)]


def poly_mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, x_ids: np.ndarray | None = None,
                       y_ids: np.ndarray | None = None) -> float:
    """Unbiased MMD^2 with the kernel (x.y / d + 1)^degree (as in KID); NaN with < 2 rows in a set.
    With row ids (distinct within each set), cross pairs of one id (the same item drawn into both
    sets) are left out, as the within-set diagonals are."""
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        return float("nan")
    d = x.shape[1]
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)  # float64 sums keep the precision

    def kernel_sums(a, b, same: bool) -> float:
        base = a @ b.T / np.float32(d) + np.float32(1)
        out = base.copy()
        for _ in range(degree - 1):  # repeated products: far cheaper than a float power
            out *= base
        return float(out.sum(dtype=np.float64) - (np.trace(out, dtype=np.float64) if same else 0.0))

    with one_blas_thread():
        sxx, syy, sxy = kernel_sums(x, x, True), kernel_sums(y, y, True), kernel_sums(x, y, False)
    n_cross = n * m
    if x_ids is not None and y_ids is not None:
        _, ix, iy = np.intersect1d(x_ids, y_ids, assume_unique=True, return_indices=True)
        if len(ix):
            same = np.einsum("ij,ij->i", x[ix].astype(np.float64), y[iy].astype(np.float64)) / d + 1.0
            sxy -= float(np.sum(same**degree))
            n_cross -= len(ix)
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / n_cross


def standardised(real: Features, synth: Features) -> tuple[np.ndarray, np.ndarray]:
    """Lesion feature matrices, log1p on sizes, z-scored with the pooled mean / SD of both sets."""
    def matrix(f):
        cols = [np.log1p(f[k]) if k in LOG_FEATURES else f[k] for k in LESION_FEATURES]
        return np.stack(cols, axis=1)

    a, b = matrix(real), matrix(synth)
    both = np.concatenate([a, b])
    mean, sd = both.mean(axis=0), both.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return (a - mean) / sd, (b - mean) / sd


def lesion_rates(real: Features, synth: Features) -> dict[str, dict]:
    """`lesion_rate_diff` (mean over classes of |synthetic - real| fraction of lesion slices) and, with
    more than one class, the signed difference per class."""
    has_r, has_s = real["lesion_count"] > 0, synth["lesion_count"] > 0
    if "label" in real and "label" in synth:
        lab_r, lab_s = real["label"], synth["label"]
        classes = np.intersect1d(lab_r, lab_s)
    else:
        lab_r, lab_s, classes = np.zeros(real.n), np.zeros(synth.n), np.zeros(1)
    out, diffs = {}, []
    for c in classes:
        rr, rs = has_r[lab_r == c].mean(), has_s[lab_s == c].mean()
        diffs.append(abs(rs - rr))
        if len(classes) > 1:
            out[f"lesion_rate_diff_class{c}"] = metric(rs - rr, rr, rs)
    value = float(np.mean(diffs)) if diffs else None
    return {"lesion_rate_diff": metric(value, has_r.mean(), has_s.mean()), **out}


def compare(real: Features, synth: Features, cfg) -> dict[str, dict]:
    count_r, count_s = real["lesion_count"], synth["lesion_count"]
    cr, cs = count_r.mean(), count_s.mean()
    out = {"lesion_count_diff": metric(cs - cr, cr, cs), **lesion_rates(real, synth)}
    if not (count_r > 0).any():
        return out  # nothing real to compare shapes with: the mask components are missing, not absent
    per_r = count_r[count_r > 0].mean()
    if (count_s > 0).any():
        per_s = count_s[count_s > 0].mean()
        out["lesion_count_ratio"] = metric(per_s / per_r, per_r, per_s)
    else:
        out["lesion_count_ratio"] = absent(per_r)
    if len(real["area"]) < 2:
        return out
    if len(synth["area"]) < 2:
        out["mask_mmd"] = absent(what="lesions" if len(synth["area"]) == 0 else "second lesion")
        return out
    a, b = standardised(real, synth)
    rows_r = capped_rows(distinct_rows(real["lesion_id"]))
    rows_s = capped_rows(distinct_rows(synth["lesion_id"]))
    out["mask_mmd"] = metric(poly_mmd2_unbiased(a[rows_r], b[rows_s], x_ids=real["lesion_id"][rows_r],
                                                y_ids=synth["lesion_id"][rows_s]))
    for k in LESION_FEATURES:
        out[f"lesion_{k}_wasserstein"] = metric(stats.wasserstein_distance(real[k], synth[k]),
                                                real[k].mean(), synth[k].mean())
    return out


def detail(real: Features, synth: Features, cfg) -> dict:
    """Figure data: quantiles (5 .. 95 %) of each lesion feature in both sets."""
    q = np.linspace(5, 95, 19)
    out = {}
    for k in LESION_FEATURES:
        if len(real[k]) and len(synth[k]):
            out[f"quantiles_{k}"] = {"x": q.tolist(), "real": np.percentile(real[k], q).tolist(),
                                     "synthetic": np.percentile(synth[k], q).tolist()}
    return out
