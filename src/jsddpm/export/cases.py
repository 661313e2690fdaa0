"""What an export holds, whatever the segmentation tool: the real slices of a cache's training split (or a
subject fraction of it) and its test split, the synthetic pairs of generation / inpaint folders, their
names and provenance, and validation folds of real subjects only; and the files of one case (NIfTI or PNG).

Leakage rules (the point of exporting through jsddpm rather than by hand):
- no test-split subject is ever a training case, nor the source slice of a synthetic training case
  (inpaint and SDEdit record it as `source_index`);
- a synthetic set must come from a model trained on the exported cache (`cache_fingerprint` in
  samples.npz against the cache's own), so its training subjects are this cache's training subjects;
- validation folds hold real subjects only, disjoint; a synthetic pair made from a real slice is left
  out of the training cases of the fold that validates on that slice's subject.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

FORMATS = ("auto", "nifti", "png")
ENDINGS = {"nifti": ".nii.gz", "png": ".png"}
CASE_COLUMNS = ("case", "role", "fold", "kind", "source", "subject", "z", "zbin", "label", "class", "fidelity",
                "cache_row", "sample_row", "source_row")


@dataclass
class SyntheticSet:
    """The pairs of one generation or inpaint folder (samples.npz), checked against the real cache."""
    folder: Path  # as cases.csv's `source` names it
    path: Path  # its samples.npz
    tag: str  # case-name prefix: "syn", or "syn1", "syn2", ... with several folders
    images: np.ndarray  # (N, C + 1, H, W) float32 in [-1, 1], mask last
    zbin: np.ndarray
    label: np.ndarray
    fidelity: np.ndarray | None  # NaN = not scored; None = no scores at all
    source_index: np.ndarray | None  # the cache row each pair was made from (inpaint, SDEdit)


@dataclass
class Case:
    name: str  # the tool's case identifier: real_<subject>_z<z>, syn_<row>
    role: str  # "train" or "test"
    kind: str  # "real" or "synthetic"
    source: str  # "real" or the synthetic folder
    subject: str  # the real subject; for a synthetic pair made from a real slice, that slice's subject
    zbin: int
    label: int
    fold: int = -1  # real training cases: the fold that validates on their subject; else -1
    z: int | None = None
    fidelity: float = float("nan")
    cache_row: int = -1
    sample_row: int = -1
    source_row: int = -1


@dataclass
class ExportPlan:
    cache: object  # the real SliceCache
    cases: list[Case]
    synthetic: dict[str, SyntheticSet]  # by folder (Case.source)
    fmt: str  # "nifti" or "png"
    folds: int
    notes: list[str] = field(default_factory=list)  # printed: provenance and what was dropped

    @property
    def training(self) -> list[Case]:
        return [c for c in self.cases if c.role == "train"]

    @property
    def test(self) -> list[Case]:
        return [c for c in self.cases if c.role == "test"]

    def pair(self, case: Case) -> tuple[np.ndarray, np.ndarray]:
        """(image (C, H, W) float32 in [-1, 1], mask (H, W) uint8 {0, 1}) of one case."""
        if case.kind == "real":
            joint = self.cache.joint([case.cache_row])[0]
        else:
            joint = self.synthetic[case.source].images[case.sample_row]
        return np.asarray(joint[:-1], np.float32), (joint[-1] > 0).astype(np.uint8)

    def splits(self) -> list[dict[str, list[str]]]:
        """nnU-Net's splits_final.json: per fold, validation = the real cases of the fold's subjects,
        training = every other training case except synthetic pairs made from those subjects' slices."""
        out = []
        for k in range(self.folds):
            held = {c.subject for c in self.training if c.kind == "real" and c.fold == k}
            val = [c.name for c in self.training if c.kind == "real" and c.fold == k]
            train = [c.name for c in self.training if c.fold != k and not (c.kind == "synthetic" and c.subject in held)]
            out.append({"train": sorted(train), "val": sorted(val)})
        return out

    def summary(self) -> list[str]:
        real = [c for c in self.training if c.kind == "real"]
        lines = [f"  training: {len(real)} real slices of {len({c.subject for c in real})} subjects"
                 + "".join(f", {sum(c.source == s for c in self.training)} synthetic from {s}" for s in self.synthetic),
                 f"  test: {len(self.test)} real slices of {len({c.subject for c in self.test})} subjects "
                 f"(never in training); {self.folds} validation folds of real subjects only"]
        return lines + [f"  note: {n}" for n in self.notes]


# ------------------------------------------------------------------------------------ names
def safe_name(text: str) -> str:
    """A case-name part: letters, digits, '-' and '_' (file names and nnU-Net identifiers)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", str(text)) or "x"


def check_dataset_name(name: str, dataset_id: int) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name or ""):
        raise UserError(f"--name '{name}': use letters, digits, '-' and '_' only (it becomes Dataset"
                        f"{dataset_id:03d}_NAME)")
    if not 1 <= dataset_id <= 999:
        raise UserError(f"--dataset-id {dataset_id}: nnU-Net dataset ids are 1..999 (custom datasets from 500)")
    return f"Dataset{dataset_id:03d}_{name}"


# ------------------------------------------------------------------------------------ reading
def read_synthetic(folder, cache, tag: str) -> SyntheticSet:
    """The pairs of a generation / inpaint folder, refused in one line when they cannot be this cache's:
    another cache's model, other channels or size, no mask, values outside [-1, 1]."""
    from ..io import reading

    folder = Path(folder).resolve()
    path = folder / "samples.npz" if folder.is_dir() else folder
    if not path.is_file() or path.suffix != ".npz":
        raise UserError(f"{folder}: no samples.npz; give a folder written by `jsddpm generate` or `jsddpm inpaint`")
    with reading(path, "synthetic set (.npz)", "regenerate it"), np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("images", "zbin", "label") if k not in data.files]
        if missing:
            raise UserError(f"{path}: lacks {', '.join(missing)}; give a samples.npz written by jsddpm")
        images = np.asarray(data["images"], np.float32)
        zbin, label = np.asarray(data["zbin"], np.int64), np.asarray(data["label"], np.int64)
        fidelity = np.asarray(data["fidelity"], np.float64) if "fidelity" in data.files else None
        source_index = np.asarray(data["source_index"], np.int64) if "source_index" in data.files else None
        recorded = np.asarray(data["cache_fingerprint"]).reshape(-1) if "cache_fingerprint" in data.files else []
        fingerprint = str(recorded[0]) if len(recorded) else None
    n, c, h, w = cache.images.shape
    if images.ndim != 4 or images.shape[1:] != (c + 1, h, w):
        raise UserError(f"{path}: pairs of shape {images.shape[1:]}, but the cache {cache.root} needs image + mask "
                        f"{(c + 1, h, w)}; export a set made by a model trained on this cache")
    if len(zbin) != len(images) or len(label) != len(images):
        raise UserError(f"{path}: {len(images)} images but {len(zbin)} zbin / {len(label)} label values; regenerate it")
    for name, vector in (("fidelity", fidelity), ("source_index", source_index)):
        if vector is not None and vector.shape != (len(images),):
            raise UserError(f"{path}: '{name}' has shape {vector.shape}, expected ({len(images)},); regenerate it")
    if not np.isfinite(images).all() or images.min(initial=0) < -1.001 or images.max(initial=0) > 1.001:
        raise UserError(f"{path}: images hold NaN, Inf or values outside [-1, 1]; regenerate the set")
    check_provenance(folder, path, fingerprint, cache)
    if source_index is not None and len(source_index):
        if source_index.min() < 0 or source_index.max() >= n:
            raise UserError(f"{path}: source_index points outside the cache's {n} rows; it was made from another "
                            "cache: export it with that one")
        test = np.flatnonzero(cache.index["split"][source_index] == "test")
        if len(test):
            subject = cache.index["subject_id"][source_index[test[0]]]
            raise UserError(f"{path}: {len(test)} pair(s) were made from test-split slices (e.g. row "
                            f"{source_index[test[0]]}, subject {subject}); a test subject never trains the "
                            "segmenter: inpaint / generate from the train split")
    return SyntheticSet(folder, path, tag, images, zbin, label, fidelity, source_index)


def check_provenance(folder: Path, path: Path, fingerprint: str | None, cache) -> None:
    """The set's model must have been trained on `cache`: samples.npz's `cache_fingerprint` against the
    cache's; older sets without one fall back to their config.yaml's data.cache_dir (and a note)."""
    mine = cache.fingerprint
    if fingerprint is not None:
        if fingerprint != mine:
            raise UserError(f"{path}: made by a model trained on another cache (fingerprint {fingerprint}; "
                            f"{cache.root} has {mine}); export it with the cache its model was trained on")
        return
    from ..data.cache import cache_fingerprint

    cache_dir = _config_cache_dir(folder)
    unverified = f"{path} has no cache_fingerprint (made by an older jsddpm): provenance could not be verified"
    if cache_dir is None:
        print(f"note: {unverified}; its config.yaml names no data.cache_dir", flush=True)
        return
    try:
        theirs = cache_fingerprint(cache_dir)
    except OSError:
        print(f"note: {unverified}; its config.yaml's data.cache_dir {cache_dir} cannot be read", flush=True)
        return
    if theirs != mine:
        raise UserError(f"{path}: made by a model trained on {cache_dir} (config.yaml data.cache_dir), another cache "
                        f"than {cache.root}; export it with the cache its model was trained on")
    print(f"note: {unverified}; its config.yaml's data.cache_dir {cache_dir} holds the same cache today", flush=True)


def _config_cache_dir(folder: Path) -> Path | None:
    config = folder / "config.yaml" if folder.is_dir() else folder.parent / "config.yaml"
    if not config.is_file():
        return None
    from omegaconf import OmegaConf

    from ..io import reading

    with reading(config, "config (YAML)", "fix or delete it"):
        value = OmegaConf.select(OmegaConf.load(config), "data.cache_dir", default="")
    return Path(str(value)) if value else None


# ------------------------------------------------------------------------------------ planning
def plan_export(real, synthetic=(), real_fraction: float = 1.0, min_fidelity: float | None = None,
                fmt: str = "auto", folds: int = 5, seed: int = 0, include_val: bool = False) -> ExportPlan:
    """Which cases an export holds (see the module docstring); reads and checks every input first."""
    from ..data.cache import load_cache
    from ..data.splits import assign_splits

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    if not 0 < real_fraction <= 1:
        raise UserError(f"--real-fraction {real_fraction}: give a fraction of the training subjects in (0, 1]")
    if folds < 2:
        raise UserError(f"--folds {folds}: cross-validation needs at least 2 folds")
    cache = load_cache(real)
    if cache.masks is None:
        raise UserError(f"{cache.root}: an image-only cache (no masks.npy); a segmentation dataset needs a label "
                        "per image: cache volumes with masks")
    index = cache.index
    fmt = ("nifti" if cache.stats.get("spacing_mm") else "png") if fmt == "auto" else fmt
    if fmt == "png" and cache.images.shape[1] not in (1, 3):
        raise UserError(f"--format png: {cache.images.shape[1]} image channels; PNG holds 1 (grey) or 3 (RGB)")
    train_splits = ("train", "val") if include_val else ("train",)
    pool = np.isin(index["split"], train_splits)
    subjects, first = np.unique(index["subject_id"][pool], return_index=True)
    groups = index["group"][np.flatnonzero(pool)[first]]
    notes = []
    if real_fraction < 1:
        picked, _ = assign_splits(subjects, groups, [real_fraction, 1 - real_fraction, 0], 1, seed,
                                  f"--real-fraction {real_fraction}")
        keep = np.asarray(picked) == "train"
        notes.append(f"--real-fraction {real_fraction}: {int(keep.sum())} of {len(subjects)} training subjects "
                     f"(stratified by group, seed {seed})")
        subjects, groups = subjects[keep], groups[keep]
    if len(subjects) < folds:
        raise UserError(f"--folds {folds}: only {len(subjects)} real training subject(s) to validate on; give "
                        f"--folds {max(2, len(subjects))} or fewer, or a larger --real-fraction")
    _, fold_list = assign_splits(subjects, groups, [1, 0, 0], folds, seed, str(cache.root))
    fold_of = dict(zip(subjects.tolist(), fold_list))
    test_subjects = set(index["subject_id"][index["split"] == "test"].tolist())
    leaked = sorted(test_subjects & set(fold_of))
    if leaked:
        raise UserError(f"{cache.root / 'index.csv'}: subject {leaked[0]} is in the test split and in "
                        f"{'/'.join(train_splits)}; rebuild the cache with `jsddpm cache`")

    cases = []
    names: set[str] = set()

    def unique(name: str, row: int) -> str:
        name = name if name not in names else f"{name}_r{row}"
        names.add(name)
        return name

    for row in range(len(cache)):
        subject, split = str(index["subject_id"][row]), str(index["split"][row])
        if subject in fold_of or split == "test":
            z = int(index["z"][row]) if "z" in index else 0
            name = unique(f"real_{safe_name(subject)}_z{z:03d}", row)
            cases.append(Case(name, "test" if split == "test" else "train", "real", "real", subject,
                              int(index["zbin"][row]), int(index["label"][row]), fold_of.get(subject, -1), z=z,
                              cache_row=row))
    sets = {}
    folders = list(synthetic)
    for k, folder in enumerate(folders):
        tag = "syn" if len(folders) == 1 else f"syn{k + 1}"
        s = read_synthetic(folder, cache, tag)
        if str(s.folder) in sets:
            raise UserError(f"--synthetic {folder}: given twice; give each set once")
        sets[str(s.folder)] = s
        rows = np.arange(len(s.images))
        if min_fidelity is not None:
            rows = _passing(s, min_fidelity, notes)
        for row in rows:
            src = int(s.source_index[row]) if s.source_index is not None else -1
            subject = str(index["subject_id"][src]) if src >= 0 else ""
            fidelity = float(s.fidelity[row]) if s.fidelity is not None else float("nan")
            cases.append(Case(unique(f"{tag}_{row:06d}", row), "train", "synthetic", str(s.folder), subject,
                              int(s.zbin[row]), int(s.label[row]), fidelity=fidelity, sample_row=int(row),
                              source_row=src))
    return ExportPlan(cache, cases, sets, fmt, folds, notes)


def _passing(s: SyntheticSet, threshold: float, notes: list[str]) -> np.ndarray:
    """Rows of `s` whose fidelity is >= threshold; unscored (NaN) pairs do not pass."""
    path = s.path
    if s.fidelity is None or np.isnan(s.fidelity).all():
        raise UserError(f"{path}: its pairs have no fidelity scores; drop --min-fidelity or export scored pairs")
    scored = ~np.isnan(s.fidelity)
    keep = scored & (np.nan_to_num(s.fidelity, nan=-np.inf) >= threshold)
    notes.append(f"--min-fidelity {threshold}: {s.folder}: kept {int(keep.sum())} of {len(keep)} pairs "
                 f"({int((scored & ~keep).sum())} below, {int((~scored).sum())} not scored)")
    return np.flatnonzero(keep)


# ------------------------------------------------------------------------------------ writing
# the through-plane spacing of a one-slice NIfTI: nnU-Net puts the axis of largest spacing first and plans
# 2-D networks over the others, so it must be the largest (nnU-Net's own 2-D -> NIfTI converter uses 999);
# with the cache's slice thickness (3 mm < 3.5 mm in plane in the demo) it cut 1 x 64 "slices" across them
THROUGH_PLANE_MM = 999.0


def spacing_of(cache) -> list[float]:
    """The export's voxel spacing (x, y, z) in mm: the cache's in-plane spacing (1 mm for image-folder
    caches, which have none) and THROUGH_PLANE_MM."""
    spacing = cache.stats.get("spacing_mm") or [1.0, 1.0]
    return [float(spacing[0]), float(spacing[1]), THROUGH_PLANE_MM]


def write_case(images_dir: Path, labels_dir: Path, name: str, image: np.ndarray, mask: np.ndarray, fmt: str,
               spacing_mm) -> tuple[list[Path], Path]:
    """One case's files. NIfTI: one `NAME_000c.nii.gz` per image channel (X x Y x 1 in RAS at `spacing_mm`,
    float32 values exactly as in the cache) + a `NAME.nii.gz` uint8 label. PNG: one `NAME_0000.png` (grey or
    RGB, 8 bits) + a `NAME.png` uint8 label. Returns (image paths, label path). The folders are temporary
    (atomic_dir), so the files are written directly."""
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "nifti":
        from ..generation.outputs import nifti_bytes, slices_to_ras

        paths = [images_dir / f"{name}_{c:04d}.nii.gz" for c in range(len(image))]
        for path, channel in zip(paths, image):
            path.write_bytes(nifti_bytes(slices_to_ras(channel[None]).astype(np.float32), spacing_mm, 1))
        label = labels_dir / f"{name}.nii.gz"
        label.write_bytes(nifti_bytes(slices_to_ras(mask[None]).astype(np.uint8), spacing_mm, 1))
        return paths, label
    from PIL import Image

    from ..imaging import to_uint8

    pixels = to_uint8(image.transpose(1, 2, 0))
    paths, label = [images_dir / f"{name}_0000.png"], labels_dir / f"{name}.png"
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(paths[0], format="PNG")
    Image.fromarray(mask).save(label, format="PNG")
    return paths, label


def write_cases(root: Path, plan: ExportPlan) -> dict[str, tuple[list[Path], Path]]:
    """Every case of `plan` into root/imagesTr, labelsTr, imagesTs, labelsTs; returns name -> files."""
    spacing = spacing_of(plan.cache)
    files = {}
    for case in plan.cases:
        part = "Tr" if case.role == "train" else "Ts"
        image, mask = plan.pair(case)
        files[case.name] = write_case(root / f"images{part}", root / f"labels{part}", case.name, image, mask,
                                      plan.fmt, spacing)
    return files


def cases_csv(plan: ExportPlan) -> str:
    """cases.csv: one row per case with its provenance (CASE_COLUMNS)."""
    classes = plan.cache.classes
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(CASE_COLUMNS)
    for c in plan.cases:
        writer.writerow([c.name, c.role, c.fold, c.kind, c.source, c.subject, "" if c.z is None else c.z, c.zbin,
                         c.label, classes[c.label] if 0 <= c.label < len(classes) else "",
                         "" if np.isnan(c.fidelity) else f"{c.fidelity:.6g}", c.cache_row, c.sample_row,
                         c.source_row])
    return buf.getvalue()


def channel_names(n_channels: int, modality: str) -> dict[str, str]:
    """nnU-Net's channel_names: the modality for one channel, R / G / B for three."""
    if n_channels == 1:
        return {"0": modality}
    if n_channels == 3:
        return {"0": "R", "1": "G", "2": "B"}
    return {str(c): f"{modality}{c}" for c in range(n_channels)}
