"""The slice cache: build it from a manifest of NIfTI volumes, write it atomically, load it.

Folder layout (docs/internals.md): images.npy, masks.npy (joint data only), index.csv, priors.npy,
stats.json, config.yaml, versions.json, and validated.npz (the stamp of the last full check, written by
`load_cache`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

INDEX_COLUMNS = ("subject_id", "group", "label", "split", "fold", "z", "z_norm", "zbin", "has_lesion",
                 "lesion_area")
MANIFEST_COLUMNS = ("subject_id", "image", "mask", "group")
LESION_CLASSES = ("no_lesion", "lesion")  # class names when data.slice_label = "lesion"
_INT_COLUMNS = {"label", "fold", "z", "zbin", "has_lesion", "lesion_area"}
_FLOAT_COLUMNS = {"z_norm"}


def zbin_of(z_norm: np.ndarray, n_zbins: int) -> np.ndarray:
    """zbin = min(floor(z_norm * n_zbins), n_zbins - 1)."""
    return np.minimum(np.floor(np.asarray(z_norm) * n_zbins).astype(np.int64), n_zbins - 1)


# ---------------------------------------------------------------------------------------- loading
@dataclass
class SliceCache:
    root: Path
    images: np.ndarray  # (N, C, H, W) float32 memmap
    masks: np.ndarray | None  # (N, 1, H, W) uint8 memmap, None for image-only data
    index: dict[str, np.ndarray]
    priors: np.ndarray  # (n_zbins, H, W) float32
    stats: dict

    def __len__(self) -> int:
        return len(self.images)

    @property
    def classes(self) -> list[str]:
        return list(self.stats["classes"])

    @property
    def n_zbins(self) -> int:
        return int(self.stats["n_zbins"])

    @property
    def fingerprint(self) -> str:
        """What identifies this cache's content, whatever its folder is called: see `cache_fingerprint`."""
        return cache_fingerprint(self.root)

    def indices(self, split: str | None = None) -> np.ndarray:
        """Row numbers of one split ("train", "val", "test"); None or "all" gives every row."""
        if split in (None, "all"):
            return np.arange(len(self.images))
        return np.flatnonzero(self.index["split"] == split)

    def joint(self, idx) -> np.ndarray:
        """float32 (n, C[+1], H, W): the image channels, then the mask in {-1, +1} if there are masks."""
        idx = np.asarray(idx)
        images = np.asarray(self.images[idx], dtype=np.float32)
        if self.masks is None:
            return images
        masks = np.asarray(self.masks[idx], dtype=np.float32) * 2.0 - 1.0
        return np.concatenate([images, masks], axis=1)


def cache_fingerprint(root) -> str:
    """16 hex digits of SHA-256 over index.csv and stats.json: which subjects, slices, splits, z-bins and
    classes the cache holds. A checkpoint records it, so resume, generation and export can tell a copied
    or renamed cache (same fingerprint) from another cache (different one) without reading the arrays."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("index.csv", "stats.json"):
        digest.update((Path(root) / name).read_bytes())
    return digest.hexdigest()[:16]


def read_index(path: Path) -> dict[str, np.ndarray]:
    from ..io import reading

    with reading(path, "cache index", "rebuild the cache with `jsddpm cache`"), open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        columns = rows[0].keys() if rows else INDEX_COLUMNS
        index = {}
        for name in columns:
            values = [r[name] for r in rows]
            if any(v is None for v in values):
                raise ValueError(f"column {name} is missing in some rows")
            if name in _INT_COLUMNS:
                index[name] = np.asarray(values, dtype=np.int64)
            elif name in _FLOAT_COLUMNS:
                index[name] = np.asarray(values, dtype=np.float32)
            else:
                index[name] = np.asarray(values, dtype=str)
    return index


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    """An array of a cache; a truncated or foreign file, or one holding Python objects, is refused."""
    from ..io import reading

    with reading(path, ".npy array", "the cache was damaged after it was built; rebuild it with `jsddpm cache`"):
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    return array


def _all_finite_within(array: np.ndarray, lo: float, hi: float, rows: int = 256) -> bool:
    """Every value finite and in [lo, hi], checked in chunks of `rows` (a memmap is never loaded whole)."""
    for start in range(0, len(array), rows):
        chunk = np.asarray(array[start:start + rows], dtype=np.float32)
        if not np.isfinite(chunk).all() or chunk.min(initial=lo) < lo or chunk.max(initial=hi) > hi:
            return False
    return True


def check_cache(cache: SliceCache, values: bool = True) -> None:
    """A cache damaged or edited after it was built is refused in one line naming the file: the files
    must agree in length and shape, and images / priors must be finite values in their range.

    `values=False` skips reading every value of images.npy and masks.npy (the slow part: ~13 s for 13 GB),
    for a cache whose stamp (`stamped_index`) shows it unchanged since a full check passed."""
    root = cache.root
    fix = "the cache was damaged or edited after it was built; rebuild it with `jsddpm cache`"
    images, masks, priors = cache.images, cache.masks, cache.priors
    if images.ndim != 4 or images.dtype.kind != "f":
        raise UserError(f"{root / 'images.npy'}: holds {images.dtype} {images.shape}, "
                        f"expected float (N, C, H, W); {fix}")
    n, _, h, w = images.shape
    if masks is not None and (masks.ndim != 4 or masks.shape != (n, 1, h, w)):
        raise UserError(f"{root / 'masks.npy'}: shape {masks.shape} does not match images.npy's {images.shape} "
                        f"(expected {(n, 1, h, w)}); {fix}")
    lengths = {name: len(col) for name, col in cache.index.items()}
    if any(k != n for k in lengths.values()):
        raise UserError(f"{root / 'index.csv'}: {min(lengths.values())} rows but images.npy holds {n} slices; {fix}")
    missing = [c for c in ("split", "label", "zbin", "z_norm") if c not in cache.index]
    if missing:
        raise UserError(f"{root / 'index.csv'}: lacks column(s) {', '.join(missing)}; {fix}")
    stats_n = cache.stats.get("n_slices") if isinstance(cache.stats, dict) else None
    if not isinstance(cache.stats, dict) or "classes" not in cache.stats or "n_zbins" not in cache.stats:
        raise UserError(f"{root / 'stats.json'}: lacks 'classes' or 'n_zbins'; {fix}")
    if stats_n is not None and stats_n != n:
        raise UserError(f"{root / 'stats.json'}: says {stats_n} slices but images.npy holds {n}; {fix}")
    n_zbins = cache.n_zbins
    if priors.shape != (n_zbins, h, w):
        raise UserError(f"{root / 'priors.npy'}: shape {priors.shape}, expected ({n_zbins}, {h}, {w}); {fix}")
    zbin, z_norm, label = cache.index["zbin"], cache.index["z_norm"], cache.index["label"]
    if n and (zbin.min() < 0 or zbin.max() >= n_zbins or not np.isfinite(z_norm).all()
              or label.min() < 0 or label.max() >= max(len(cache.classes), 1)):
        raise UserError(f"{root / 'index.csv'}: zbin, z_norm or label values outside the cache's "
                        f"{n_zbins} z-bins / {len(cache.classes)} classes; {fix}")
    if not _all_finite_within(priors, -1e-3, 1.0 + 1e-3):
        raise UserError(f"{root / 'priors.npy'}: holds NaN, Inf or values outside [0, 1]; {fix}")
    if not values:
        return
    if not _all_finite_within(images, -1.001, 1.001):
        raise UserError(f"{root / 'images.npy'}: holds NaN, Inf or values outside [-1, 1]; {fix}")
    if masks is not None and not _all_finite_within(masks, 0, 1):
        raise UserError(f"{root / 'masks.npy'}: holds values other than 0 and 1; {fix}")


def load_cache(path) -> SliceCache:
    """The slice cache at `path`, checked (see `check_cache`): a damaged cache never reaches a stage.

    Every value is read only when the cache's stamp does not show it unchanged since the last full check
    (`stamped_index`); a full check that passes writes a new stamp, so later loads take milliseconds."""
    from ..io import reading

    root = Path(path)
    missing = [n for n in ("images.npy", "index.csv", "priors.npy", "stats.json") if not (root / n).is_file()]
    if missing:
        raise UserError(f"{root}: not a slice cache (no {' / '.join(missing)}); build one with `jsddpm cache`")
    started_ns, states = time.time_ns(), file_states(root)
    fingerprint = cache_fingerprint(root)
    stamped = stamped_index(root, states, fingerprint)
    masks_path = root / "masks.npy"
    stats_path = root / "stats.json"
    with reading(stats_path, "cache summary (JSON)", "rebuild the cache with `jsddpm cache`"):
        stats = json.loads(stats_path.read_text())
    cache = SliceCache(
        root=root,
        images=_load_npy(root / "images.npy", mmap=True),
        masks=_load_npy(masks_path, mmap=True) if masks_path.is_file() else None,
        index=read_index(root / "index.csv") if stamped is None else stamped,
        priors=_load_npy(root / "priors.npy", mmap=False),
        stats=stats,
    )
    check_cache(cache, values=stamped is None)
    if stamped is None and file_states(root) == states:  # unchanged while it was read: what was checked is there
        write_stamp(root, states, fingerprint, started_ns, cache.index)
    return cache


# ------------------------------------------------------------------------------ validation stamp
# The stamp records what the files looked like when a full check passed: size, modification and change
# times and inode of each file, and the fingerprint (a hash of index.csv and stats.json); it also holds
# the parsed index (parsing a 100,000-row index.csv takes ~1 s, loading its columns from the stamp ~20 ms).
# Any write, copy, `touch` or replacement changes the change time (which no user can set) or the inode,
# so a file edited since is read in full again. A file changed within STAMP_SETTLE_NS before a check
# could be edited again within the same file-system clock tick without a visible change (git's "racy
# clean" files), so such a stamp is not trusted: the next load checks in full and writes a new one.
STAMP = "validated.npz"
STAMP_FILES = ("images.npy", "masks.npy", "priors.npy", "index.csv", "stats.json")
STAMP_SETTLE_NS = 2_000_000_000  # 2 s: coarser than any file-system clock tick (FAT's is 2 s)


def file_states(root) -> dict[str, list[int]]:
    """Per cache file present: [size, mtime_ns, ctime_ns, inode]."""
    states = {}
    for name in STAMP_FILES:
        try:
            st = os.stat(Path(root) / name)
        except FileNotFoundError:
            continue
        states[name] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return states


def stamp_locations(root) -> list[Path]:
    """Where a cache's stamp may be: inside the cache, else (a read-only cache, e.g. a shared one) in the
    user's cache folder under a name derived from the cache's absolute path."""
    import hashlib

    root = Path(root)
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jsddpm" / "cache_stamps"
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return [root / STAMP, user / f"{key}.npz"]


def stamped_index(root, states: dict[str, list[int]], fingerprint: str) -> dict[str, np.ndarray] | None:
    """The index held by a stamp that shows the files `states` unchanged since a full check passed on
    them; None when there is no such stamp."""
    import zipfile

    for location in stamp_locations(root):
        try:
            with np.load(location, allow_pickle=False) as data:
                stamp = json.loads(str(data["stamp"]))
                if not (isinstance(stamp, dict) and stamp.get("files") == states
                        and stamp.get("fingerprint") == fingerprint and isinstance(stamp.get("checked_ns"), int)
                        and all(max(s[1], s[2]) + STAMP_SETTLE_NS <= stamp["checked_ns"] for s in states.values())):
                    continue
                return {name: data[f"index.{name}"] for name in stamp["columns"]}
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            continue
    return None


def write_stamp(root, states: dict[str, list[int]], fingerprint: str, checked_ns: int,
                index: dict[str, np.ndarray]) -> None:
    """Record a passed full check (started at `checked_ns`) with the parsed index; a stamp that cannot be
    written anywhere only costs the next load a full check."""
    from ..io import atomic_write_bytes

    stamp = {"files": states, "fingerprint": fingerprint, "checked_ns": checked_ns, "columns": list(index)}
    buf = io.BytesIO()
    np.savez(buf, stamp=np.asarray(json.dumps(stamp)), **{f"index.{k}": v for k, v in index.items()})
    for location in stamp_locations(root):
        try:
            atomic_write_bytes(location, buf.getvalue())
            return
        except OSError:
            continue


# ---------------------------------------------------------------------------------------- writing
def occupancy_priors(brain: np.ndarray, zbins: np.ndarray, train: np.ndarray, n_zbins: int) -> np.ndarray:
    """(n_zbins, H, W) mean occupancy of the TRAIN slices in each z-bin; an empty bin borrows the
    nearest bin that has train slices."""
    h, w = brain.shape[1:]
    priors = np.zeros((n_zbins, h, w), dtype=np.float32)
    filled = np.zeros(n_zbins, dtype=bool)
    for b in range(n_zbins):
        rows = np.flatnonzero(train & (zbins == b))
        if len(rows):
            priors[b] = brain[rows].mean(axis=0)
            filled[b] = True
    if not filled.any():
        return priors
    have = np.flatnonzero(filled)
    for b in np.flatnonzero(~filled):
        priors[b] = priors[have[np.argmin(np.abs(have - b))]]
    return priors


def cache_stats(index: dict[str, np.ndarray], classes: list[str], n_zbins: int, extra: dict) -> dict:
    def counts(column):
        values, n = np.unique(index[column], return_counts=True)
        return {str(v): int(c) for v, c in zip(values, n)}

    subjects = {}
    for split in np.unique(index["split"]):
        subjects[str(split)] = int(len(np.unique(index["subject_id"][index["split"] == split])))
    areas = index["lesion_area"][index["has_lesion"] == 1]
    quantiles = [0.05, 0.25, 0.5, 0.75, 0.95]
    return {
        "n_slices": int(len(index["subject_id"])),
        "n_subjects": int(len(np.unique(index["subject_id"]))),
        "classes": classes,
        "n_zbins": n_zbins,
        "slices_per_split": counts("split"),
        "subjects_per_split": subjects,
        "slices_per_group": counts("group"),
        "slices_per_label": counts("label"),  # keys are label indices into `classes`
        "slices_per_zbin": {str(b): int((index["zbin"] == b).sum()) for b in range(n_zbins)},
        "lesion_slices": int((index["has_lesion"] == 1).sum()),
        "lesion_area_quantiles": {str(q): float(np.quantile(areas, q)) if len(areas) else None
                                  for q in quantiles},
        **extra,
    }


def write_cache(out: Path, cfg, images: np.ndarray, masks: np.ndarray | None, index: dict[str, np.ndarray],
                priors: np.ndarray, stats: dict) -> None:
    """Write every cache file into the (temporary) folder `out`."""
    from ..io import atomic_save_npy, atomic_write_text, write_run_record

    atomic_save_npy(out / "images.npy", images.astype(np.float32, copy=False))
    if masks is not None:
        atomic_save_npy(out / "masks.npy", masks.astype(np.uint8, copy=False))
    atomic_save_npy(out / "priors.npy", priors.astype(np.float32, copy=False))
    columns = list(INDEX_COLUMNS) + [c for c in index if c not in INDEX_COLUMNS]
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(columns)
    for row in zip(*[index[c] for c in columns]):
        writer.writerow([f"{v:.6f}" if isinstance(v, np.floating) else v for v in row])
    atomic_write_text(out / "index.csv", buf.getvalue())
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    write_run_record(out, cfg)


def summary_lines(stats: dict, out: Path) -> list[str]:
    subjects = stats["subjects_per_split"]
    slices = stats["slices_per_split"]
    lines = [f"cache: {stats['n_slices']} slices of {stats['n_subjects']} subjects -> {out}",
             "  split   subjects  slices"]
    for split in ("train", "val", "test"):
        lines.append(f"  {split:<7} {subjects.get(split, 0):>8}  {slices.get(split, 0):>6}")
    per_label = stats.get("slices_per_label", {})
    per_class = {name: per_label.get(str(i), 0) for i, name in enumerate(stats["classes"])}
    lines.append(f"  classes {stats['classes']}; slices per class {per_class}; per group {stats['slices_per_group']}")
    lines.append(f"  image {stats['channels']} x {stats['image_size']} x {stats['image_size']}, "
                 f"{stats['n_zbins']} z-bins, {stats['lesion_slices']} lesion slices")
    return lines


# ---------------------------------------------------------------------------------------- volumes
def read_manifest(path: Path) -> list[dict[str, str]]:
    """Rows with resolved paths; the manifest's own errors (columns, empty, duplicates) are UserErrors."""
    from ..io import reading
    from .volumes import why_not_a_file

    if not path.is_file():
        raise UserError(f"{path}: manifest {why_not_a_file(path)}; give the CSV written by `jsddpm phantom` "
                        "or your own")
    # utf-8-sig: spreadsheets' "CSV UTF-8" starts with a byte-order mark
    with reading(path, "manifest CSV", "save it as CSV (UTF-8)"), open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("subject_id", "image", "group") if c not in fields]
        if missing:
            raise UserError(f"{path}: manifest lacks column(s) {', '.join(missing)}; "
                            f"its header must be {','.join(MANIFEST_COLUMNS)}")
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    rows = [r for r in rows if any(r.values())]
    if not rows:
        raise UserError(f"{path}: manifest has no subjects; add one row per subject")
    seen = set()
    for r in rows:
        if not r["subject_id"]:
            raise UserError(f"{path}: a row has an empty subject_id (image '{r['image']}'); give every subject an id")
        if r["subject_id"] in seen:
            raise UserError(f"{path}: duplicate subject_id '{r['subject_id']}'; give every subject one row")
        seen.add(r["subject_id"])
        if not r["image"] or not r["group"]:
            raise UserError(f"{path}: subject '{r['subject_id']}' has no image or group; fill both columns")
        r["image"] = str(path.parent / r["image"])
        r["mask"] = str(path.parent / r["mask"]) if r.get("mask") else ""
    return rows


def build_volume_cache(manifest: Path, out: Path, cfg) -> dict:
    """Manifest of NIfTI volumes -> slice cache at `out` (atomic). Returns stats.json's content."""
    from ..io import atomic_dir

    with atomic_dir(out) as tmp:  # entered first: an existing non-empty --out fails before any work
        images, masks, index, priors, stats = volume_cache_arrays(manifest, cfg.data)
        write_cache(tmp, cfg, images, masks, index, priors, stats)
    return stats


def volume_cache_arrays(manifest: Path, data_cfg):
    """(images, masks or None, index, priors, stats) for every kept slice of every subject."""
    from .splits import assign_splits
    from .volumes import target_spacing, volume_to_slices

    rows = read_manifest(manifest)
    classes = sorted({r["group"] for r in rows})
    label_of = {g: i for i, g in enumerate(classes)}
    splits, folds = assign_splits([r["subject_id"] for r in rows], [r["group"] for r in rows],
                                  list(data_cfg.split_fractions), data_cfg.n_folds, data_cfg.seed, str(manifest))
    joint = any(r["mask"] for r in rows)
    parts = [volume_to_slices(Path(r["image"]), Path(r["mask"]) if r["mask"] else None, data_cfg) for r in rows]
    size = data_cfg.image_size
    images = np.concatenate([p.images for p in parts])
    if len(images) == 0:
        raise UserError(f"{manifest}: no slice passed data.min_brain_fraction={data_cfg.min_brain_fraction}; "
                        "lower it or check the images")
    brain = np.concatenate([p.brain for p in parts])
    masks = None
    if joint:
        masks = np.concatenate([p.masks if p.masks is not None else np.zeros((len(p.z), 1, size, size), np.uint8)
                                for p in parts])

    def per_slice(values):
        return np.concatenate([np.full(len(p.z), v) for p, v in zip(parts, values)])

    z_norm = np.concatenate([p.z_norm for p in parts]).astype(np.float32)
    lesion_area = (masks.reshape(len(masks), -1).sum(1).astype(np.int64) if joint
                   else np.zeros(len(images), np.int64))
    if joint and data_cfg.slice_label == "lesion":
        classes, label = list(LESION_CLASSES), (lesion_area > 0).astype(np.int64)
    else:
        label = per_slice([label_of[r["group"]] for r in rows]).astype(np.int64)
    index = {
        "subject_id": per_slice([r["subject_id"] for r in rows]),
        "group": per_slice([r["group"] for r in rows]),
        "label": label,
        "split": per_slice(splits),
        "fold": per_slice(folds).astype(np.int64),
        "z": np.concatenate([p.z for p in parts]).astype(np.int64),
        "z_norm": z_norm,
        "zbin": zbin_of(z_norm, data_cfg.n_zbins),
        "has_lesion": (lesion_area > 0).astype(np.int64),
        "lesion_area": lesion_area,
    }
    priors = occupancy_priors(brain, index["zbin"], index["split"] == "train", data_cfg.n_zbins)
    stats = cache_stats(index, classes, data_cfg.n_zbins, {
        "source": "volumes", "manifest": str(manifest), "channels": 1, "image_size": size,
        "spacing_mm": [float(s) for s in target_spacing(data_cfg)], "joint": joint})
    return images, masks, index, priors, stats
