"""Where generate's masks come from (`jsddpm generate --masks bank|generated|PATH`, a mask-conditioned
checkpoint): the image is drawn given each mask and the pair's mask channel is that mask, exactly.

- `bank`: the spec's samples; a sample of the lesion class at z-bin b gets the lesion mask of a
  training-split slice of the checkpoint's own cache at b (the nearest z-bins with one when b has none),
  one of the lesion class's candidates shuffled by (sample.seed, z-bin, class), taken in turn by the
  sample's index; the no-lesion class gets the empty mask. (A model with other classes takes the masks,
  empty or not, of the class's training slices at b; one without classes those of all of them.) Never
  another split: the pairs train segmenters that are tested on the test split. With
  sample.mask_augment each draw mirrors / turns / shifts its mask a little inside the z-bin's prior
  support (`sources.jitter_mask`, seeded by the draw's seed).
- `generated`: two stages with the same network: the joint mode (mask withheld) draws a pair whose mask
  is kept, seeded by derive_seed(seed, MASK_STAGE_KEY); then the image given that mask, with the seed.
- PATH: the user's masks, an .npy (N, H, W) (or (N, 1, H, W)) of {0, 1} or {-1, +1}, or a folder of
  PNGs ({0, 1} or {0, 255}; name order), one sample each, every one used and carried exactly. Z-bins
  from `--mask-zbins` or a CSV beside them (`<file>.csv` for an .npy, `zbins.csv` in a PNG folder;
  column `zbin`, optional `label` (index or class name) and, in a folder, `file`); without either, each
  mask goes to the z-bin whose prior map covers it best (`prior_zbins`), recorded as `zbin_from_prior`.
  Classes: the `label` column, else lesion / no-lesion by whether the mask is empty (lesion-labelled
  models), else 0 (models without classes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

MASK_STAGE_KEY = 2027  # salt of `generated`'s mask-stage seeds
BANK_KEY = 2029  # salt of the bank's order per (z-bin, class)
PNG_SUFFIXES = (".png",)


@dataclass
class MaskPlan:
    """The samples of a masked generation and how each draw gets its mask.

    `zbins`, `labels`, `indices` (one per sample), `source` (bank | generated | path), `fixed` ((N, H, W)
    bool: each sample's mask before augmentation; None for generated), `mask_index` (bank: the cache row,
    path: the position in the user's masks; -1: none / empty), `allowed` ((n_zbins, H, W) bool where an
    augmented mask may lie; None: no augmentation) and `record` (extra samples.npz fields)."""

    source: str
    zbins: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    fixed: np.ndarray | None
    mask_index: np.ndarray
    allowed: np.ndarray | None = None
    record: dict = field(default_factory=dict)

    def masks(self, positions: np.ndarray, seeds: np.ndarray) -> np.ndarray | None:
        """(n, 1, H, W) float32 in {-1, +1}: the masks of these samples for draws with these seeds; None
        for `generated` (the network draws them)."""
        if self.fixed is None:
            return None
        masks = self.fixed[positions]
        if self.allowed is not None:
            from .sources import jitter_mask

            masks = np.stack([jitter_mask(m, self.allowed[z], np.random.default_rng([int(s), 3]))
                              for m, z, s in zip(masks, self.zbins[positions], seeds)])
        return np.where(masks, 1.0, -1.0).astype(np.float32)[:, None]

    def fields(self, kept: np.ndarray) -> dict:
        """samples.npz fields for the kept samples: `mask_source` (0-d str), `mask_index`, and `record`'s."""
        out = {"mask_source": np.array(self.source), "mask_index": self.mask_index[kept]}
        for key, value in self.record.items():
            out[key] = value[kept] if np.ndim(value) else value
        return out


def mask_stage_seeds(seeds: np.ndarray) -> np.ndarray:
    """`generated`: the joint mode's seeds (the mask stage), one per image seed."""
    from ..seeding import derive_seed

    return np.array([derive_seed(int(s), MASK_STAGE_KEY) for s in seeds], np.int64)


def lesion_classes(classes: list[str], num_classes: int) -> tuple[int, int] | None:
    """(no-lesion index, lesion index) of a lesion-labelled model (data.slice_label=lesion), else None."""
    from ..data.cache import LESION_CLASSES

    if num_classes == len(LESION_CLASSES) and list(classes) == list(LESION_CLASSES):
        return 0, 1
    return None


# ------------------------------------------------------------------------------------- bank
def bank_rows(cache, zbins, labels, indices, seed: int, classes: list[str], num_classes: int) -> np.ndarray:
    """The cache row of each sample's bank mask (-1: the empty mask); see the module docstring."""
    from ..seeding import derive_seed
    from .sources import bank_candidates, nearest_zbin_rows

    idx = cache.index
    pair = lesion_classes(classes, num_classes)
    train = np.flatnonzero(idx["split"] == "train")
    out = np.full(len(zbins), -1, np.int64)
    order: dict[tuple[int, int], np.ndarray | None] = {}
    for k, (z, c, i) in enumerate(zip(zbins, labels, indices)):
        key = (int(z), int(c))
        if key not in order:
            if pair is not None:
                candidates = bank_candidates(cache, key[0]) if key[1] == pair[1] else None
            else:
                rows = train[idx["label"][train] == key[1]] if num_classes > 0 else train
                if len(rows) == 0:
                    raise UserError(f"{cache.root}: no training slice of class {key[1]} for the bank; drop it "
                                    "from the spec")
                candidates = nearest_zbin_rows(cache, rows, key[0])
            order[key] = (None if candidates is None
                          else np.random.default_rng(derive_seed(seed, BANK_KEY, *key)).permutation(candidates))
        if order[key] is not None:
            out[k] = order[key][int(i) % len(order[key])]
    return out


def bank_plan(cache, zbins, labels, indices, cfg, classes: list[str], priors) -> MaskPlan:
    size = int(cfg.data.image_size)
    rows = bank_rows(cache, zbins, labels, indices, int(cfg.sample.seed), classes, int(cfg.model.num_classes))
    fixed = np.zeros((len(rows), size, size), bool)
    used = rows >= 0
    if used.any():  # in row order: a memmap reads sorted rows fastest
        unique, inverse = np.unique(rows[used], return_inverse=True)
        fixed[used] = np.asarray(cache.masks[unique, 0])[inverse] > 0
    allowed = None
    if cfg.sample.mask_augment:
        allowed = (np.asarray(priors) > 0 if priors is not None
                   else np.ones((int(cfg.data.n_zbins), size, size), bool))
    return MaskPlan("bank", zbins, labels, indices, fixed, rows, allowed)


# ------------------------------------------------------------------------------- user masks
def as_binary(values: np.ndarray, where: str, encodings: tuple[tuple[float, float], ...]) -> np.ndarray:
    """bool lesion masks of `values` in one of the (background, lesion) `encodings`; one line otherwise."""
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise UserError(f"{where}: holds NaN or Inf; masks must hold only "
                        + " or ".join(f"{{{lo:g}, {hi:g}}}" for lo, hi in encodings))
    if values.dtype == bool:
        return values.copy()
    found = np.unique(values)
    for lo, hi in encodings:
        if np.isin(found, (lo, hi)).all():
            return values == hi
    shown = ", ".join(f"{v:g}" for v in found[:6]) + (", ..." if len(found) > 6 else "")
    raise UserError(f"{where}: values {{{shown}}} are not binary; masks must hold only "
                    + " or ".join(f"{{{lo:g}, {hi:g}}}" for lo, hi in encodings))


def read_png_mask(path: Path) -> np.ndarray:
    from ..data.images import is_colour, open_image

    img = open_image(path)
    if img.mode not in ("1", "L", "I", "I;16", "F", "P", "LA") or (img.mode == "P" and is_colour(img)):
        raise UserError(f"{path}: a {img.mode} colour image; masks are single-channel PNGs of 0 and 1 (or 255)")
    return np.asarray(img.convert("L") if img.mode in ("P", "LA") else img)


def read_user_masks(path, size: int) -> tuple[np.ndarray, list[str]]:
    """(N, H, W) bool masks of an .npy file or a folder of PNGs, and their names (file names, or
    '<file>[k]'), checked: size, binary values, no NaN (one line each)."""
    from ..io import reading

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in PNG_SUFFIXES)
        if not files:
            raise UserError(f"--masks {path}: a folder without .png masks; give PNGs, an .npy file, bank or generated")
        masks = []
        for f in files:
            data = read_png_mask(f)
            if data.shape != (size, size):
                raise UserError(f"{f}: a {data.shape[1]}x{data.shape[0]} mask; the model draws {size}x{size}")
            masks.append(as_binary(data, str(f), ((0, 1), (0, 255))))
        return np.stack(masks), [f.name for f in files]
    if path.suffix.lower() != ".npy" or not path.is_file():
        raise UserError(f"--masks {path}: not bank, generated, an .npy file or a folder of PNG masks")
    with reading(path, "mask array (.npy)", "save (N, H, W) masks with numpy.save"):
        data = np.load(path, allow_pickle=False)
    if data.ndim == 4 and data.shape[1] == 1:
        data = data[:, 0]
    if data.ndim != 3 or data.shape[1:] != (size, size) or len(data) == 0:
        raise UserError(f"{path}: masks of shape {data.shape}; expected (N, {size}, {size}) with N >= 1, the model's "
                        "size")
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise UserError(f"{path}: masks of dtype {data.dtype}; expected numbers {{0, 1}} or {{-1, +1}}")
    return as_binary(data, str(path), ((0, 1), (-1, 1))), [f"{path.name}[{k}]" for k in range(len(data))]


def zbin_table(path: Path, names: list[str]) -> dict[str, list[str]] | None:
    """The CSV beside the masks (`<file>.csv` for an .npy, `zbins.csv` in a PNG folder), its columns
    per mask in mask order; None when there is none."""
    import csv

    from ..io import reading

    table = path / "zbins.csv" if path.is_dir() else path.with_suffix(".csv")
    if not table.is_file():
        return None
    with reading(table, "z-bin table (CSV)", "give columns zbin[, label][, file]"):
        rows = list(csv.DictReader(table.read_text().splitlines()))
    if not rows or "zbin" not in rows[0]:
        raise UserError(f"{table}: no 'zbin' column; give one z-bin per mask (columns zbin[, label][, file])")
    if path.is_dir() and "file" in rows[0]:
        by_file = {r["file"]: r for r in rows}
        missing = [n for n in names if n not in by_file]
        if missing:
            raise UserError(f"{table}: no row for {missing[0]}; give every mask file a row")
        rows = [by_file[n] for n in names]
    if len(rows) != len(names):
        raise UserError(f"{table}: {len(rows)} rows for {len(names)} masks; give one row per mask, in order")
    return {col: [r[col] for r in rows] for col in rows[0] if col is not None}


def parse_zbins(values: list[str], n_zbins: int, where: str) -> np.ndarray:
    try:
        zbins = np.array([int(str(v).strip()) for v in values], np.int64)
    except ValueError:
        raise UserError(f"{where}: z-bins must be integers in [0, {n_zbins}); fix it") from None
    if len(zbins) and (zbins.min() < 0 or zbins.max() >= n_zbins):
        raise UserError(f"{where}: z-bins must be in [0, {n_zbins}) (the model's data.n_zbins); fix it")
    return zbins


def prior_zbins(masks: np.ndarray, priors) -> np.ndarray:
    """Per mask (N, H, W) bool, the z-bin whose prior map covers it best: the largest mean prior over the
    mask's pixels, ties (within 1e-6) to the z-bin with the larger brain (prior sum); an empty mask goes
    to the z-bin with the largest brain."""
    p = np.asarray(priors, np.float64).reshape(len(priors), -1)
    m = masks.reshape(len(masks), -1).astype(np.float64)
    area = m.sum(axis=1, keepdims=True)
    cover = m @ p.T / np.maximum(area, 1)
    brain = p.sum(axis=1)
    tied = cover >= cover.max(axis=1, keepdims=True) - 1e-6
    return np.argmax(np.where(tied, brain[None], -np.inf), axis=1).astype(np.int64)


def path_plan(path, cfg, classes: list[str], priors, zbins_flag: str | None = None) -> MaskPlan:
    """The samples of `--masks PATH`: one per given mask, in order (module docstring)."""
    size, n_zbins, num_classes = int(cfg.data.image_size), int(cfg.data.n_zbins), int(cfg.model.num_classes)
    path = Path(path)
    masks, names = read_user_masks(path, size)
    table = zbin_table(path, names)
    if zbins_flag is not None and table is not None and "zbin" in table:
        raise UserError(f"--mask-zbins: {path} has z-bins beside it already; give one of the two")
    from_prior = np.zeros(len(masks), bool)
    if zbins_flag is not None:
        zbins = parse_zbins(zbins_flag.split(","), n_zbins, "--mask-zbins")
        if len(zbins) == 1:
            zbins = np.repeat(zbins, len(masks))
        if len(zbins) != len(masks):
            raise UserError(f"--mask-zbins: {len(zbins)} z-bins for {len(masks)} masks; give one per mask or one "
                            "for all")
    elif table is not None:
        zbins = parse_zbins(table["zbin"], n_zbins, f"{path} z-bin table")
    else:
        if priors is None:
            raise UserError(f"{path}: the checkpoint holds no prior maps to place the masks by; give --mask-zbins")
        zbins, from_prior = prior_zbins(masks, priors), np.ones(len(masks), bool)
    lesion = masks.reshape(len(masks), -1).any(axis=1)
    pair = lesion_classes(classes, num_classes)
    if table is not None and "label" in table:
        from .spec import _label_index

        labels = np.array([_label_index(int(v) if str(v).strip().lstrip("-").isdigit() else str(v).strip(), classes,
                                        num_classes, f"{path} z-bin table") for v in table["label"]], np.int64)
    elif num_classes == 0:
        labels = np.zeros(len(masks), np.int64)
    elif pair is not None:
        labels = np.where(lesion, pair[1], pair[0]).astype(np.int64)
    else:
        raise UserError(f"{path}: the model's classes {classes} are not lesion / no lesion; give a 'label' column "
                        "in the masks' z-bin table")
    # seeds keyed by (z-bin, class, running index within it): distinct for every mask
    indices = np.zeros(len(masks), np.int64)
    seen: dict[tuple[int, int], int] = {}
    for k, key in enumerate(zip(zbins.tolist(), labels.tolist())):
        indices[k] = seen.get(key, 0)
        seen[key] = indices[k] + 1
    record = {"zbin_from_prior": from_prior, "mask_path": np.array(str(path.resolve()))}
    return MaskPlan("path", zbins, labels, indices, masks, np.arange(len(masks), dtype=np.int64), None, record)


# ------------------------------------------------------------------------------------ entry
def is_mask_file(masks: str | None) -> bool:
    from ..config import MASK_SOURCES

    return masks is not None and masks not in MASK_SOURCES


def check_mask_request(masks: str | None, ckpt, zbins_flag: str | None = None) -> None:
    """One line before any work: given masks need a mask-conditioned checkpoint, --mask-zbins a mask file."""
    if masks is not None and not ckpt.mask_conditioned:
        raise UserError(f"--masks {masks}: {ckpt.path} was not trained with model.mask_conditioning=true, so it "
                        "cannot draw an image given a mask; without --masks it draws image and mask jointly")
    if zbins_flag is not None and not is_mask_file(masks):
        raise UserError("--mask-zbins: the z-bins of given mask files (--masks PATH); with bank, generated or no "
                        "--masks the spec sets the z-bins")


def mask_plan(masks: str, ckpt, cfg, conditions: tuple | None, cache=None, zbins_flag: str | None = None) -> MaskPlan:
    """The plan of `generate --masks masks` (after `check_mask_request`): `conditions` (zbins, labels,
    indices of the spec) for bank and generated, the checkpoint's training `cache` for bank."""
    if masks == "generated":
        return MaskPlan("generated", *conditions, None, np.full(len(conditions[0]), -1, np.int64))
    if masks == "bank":
        return bank_plan(cache, *conditions, cfg, ckpt.classes, ckpt.priors)
    return path_plan(masks, cfg, ckpt.classes, ckpt.priors, zbins_flag)
