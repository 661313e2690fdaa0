"""`jsddpm export nnunet`: an nnU-Net v2 raw dataset of real + synthetic pairs, and the documented rules
of that format as a check (nnU-Net's documentation/dataset_format.md and manual_data_splits.md).

    OUT/DatasetNNN_NAME/
      dataset.json        channel_names, labels {"background": 0, "lesion": 1}, numTraining, file_ending
      imagesTr/CASE_0000.nii.gz (one file per image channel), labelsTr/CASE.nii.gz
      imagesTs/, labelsTs/  the cache's test split (nnU-Net does not read them; for your evaluation)
      splits_final.json   validation folds of real subjects only: copy it into
                          nnUNet_preprocessed/DatasetNNN_NAME/ before nnUNetv2_train
      cases.csv           provenance of every case; config.yaml / versions.json: the run record
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import UserError
from .cases import ENDINGS, ExportPlan, cases_csv, channel_names, check_dataset_name, plan_export, write_cases

LABELS = {"background": 0, "lesion": 1}


def dataset_json(plan: ExportPlan, name: str, modality: str) -> dict:
    n_channels = plan.cache.images.shape[1]
    synthetic = sum(c.kind == "synthetic" for c in plan.training)
    return {
        "channel_names": channel_names(n_channels, modality),
        "labels": dict(LABELS),
        "numTraining": len(plan.training),
        "file_ending": ENDINGS[plan.fmt],
        "name": name,
        "description": f"jsddpm export of {plan.cache.root}: {len(plan.training) - synthetic} real + {synthetic} "
                       "synthetic training slices; provenance in cases.csv, real-only folds in splits_final.json",
        "numTest": len(plan.test),
    }


def export_nnunet(real, out, dataset_id: int, name: str, synthetic=(), real_fraction: float = 1.0,
                  min_fidelity: float | None = None, fmt: str = "auto", folds: int = 5, seed: int = 0,
                  include_val: bool = False, modality: str = "MRI", overwrite: bool = False) -> Path:
    """Write OUT/DatasetNNN_NAME (atomically); returns its path. See the module docstring."""
    from ..io import atomic_dir, atomic_write_text, write_run_record

    folder_name = check_dataset_name(name, dataset_id)
    out = Path(out)
    dataset = out / folder_name
    if out.is_dir():
        clash = [p.name for p in out.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir() and p.name != folder_name]
        if clash:
            raise UserError(f"{out / clash[0]}: nnU-Net dataset id {dataset_id} is taken; give another --dataset-id "
                            "or remove that folder")
    plan = plan_export(real, synthetic, real_fraction, min_fidelity, fmt, folds, seed, include_val)
    with atomic_dir(dataset, overwrite=overwrite) as tmp:
        write_cases(tmp, plan)
        atomic_write_text(tmp / "dataset.json", json.dumps(dataset_json(plan, name, modality), indent=2) + "\n")
        atomic_write_text(tmp / "splits_final.json", json.dumps(plan.splits(), indent=1) + "\n")
        atomic_write_text(tmp / "cases.csv", cases_csv(plan))
        write_run_record(tmp)
    print(f"export nnunet: {len(plan.training)} training + {len(plan.test)} test cases ({plan.fmt}) -> {dataset}")
    for line in plan.summary():
        print(line)
    return dataset


# ------------------------------------------------------------------------------------ the rules
def read_image(path: Path) -> tuple[np.ndarray, tuple]:
    """(voxels, spacing) of a NIfTI or PNG file as nnU-Net would see its geometry."""
    if path.name.endswith(".nii.gz"):
        import nibabel as nib

        nii = nib.load(str(path))
        return np.asanyarray(nii.dataobj), tuple(float(v) for v in nii.header.get_zooms()[:3])
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img), ()


def check_nnunet_dataset(folder) -> list[str]:
    """The documented rules of an nnU-Net v2 raw dataset, plus the export's leakage rules (which need its
    cases.csv); returns the problems found (empty: none).

    dataset.json has channel_names, labels (background 0, consecutive), numTraining, file_ending; every
    image file is CASE_XXXX + file_ending with XXXX one of the channels; every training case has one
    label file and every label one case; images and label of a case share shape and spacing; label values
    are among the labels; numTraining counts the training cases; splits_final.json folds have disjoint
    validation sets of real cases only, of disjoint subjects, each case validated once; no test subject
    is a training case or the source of one. And, for this export's 2-D NIfTI, each image is one slice whose
    through-plane spacing is the largest (nnU-Net slices along the axis of largest spacing)."""
    import csv

    folder = Path(folder)
    problems = []
    try:
        meta = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"dataset.json: unreadable ({exc})"]
    missing = [k for k in ("channel_names", "labels", "numTraining", "file_ending") if k not in meta]
    if missing:
        return [f"dataset.json: lacks {', '.join(missing)}"]
    ending, channels = meta["file_ending"], sorted(meta["channel_names"], key=int)
    labels = sorted(meta["labels"].values())
    if labels[0] != 0 or labels != list(range(len(labels))):
        problems.append(f"dataset.json: labels {meta['labels']} are not background 0 then consecutive integers")
    per_file = 1 if ending == ".png" else len(channels)  # an RGB PNG holds its three channels in one file
    pattern = re.compile(rf"(.+)_(\d{{4}}){re.escape(ending)}$")
    cases: dict[str, dict[str, list]] = {}
    for part in ("Tr", "Ts"):
        images, labelled = {}, set()
        for p in sorted((folder / f"images{part}").glob("*")):
            m = pattern.fullmatch(p.name)
            if not m or int(m.group(2)) >= per_file:
                problems.append(f"images{part}/{p.name}: not CASE_XXXX{ending} with XXXX a channel below {per_file}")
                continue
            images.setdefault(m.group(1), []).append(p)
        for case, files in images.items():
            if len(files) != per_file:
                problems.append(f"images{part}/{case}: {len(files)} channel file(s), expected {per_file}")
        labels_dir = folder / f"labels{part}"
        for p in sorted(labels_dir.glob("*")) if labels_dir.is_dir() else []:
            case = p.name[: -len(ending)] if p.name.endswith(ending) else None
            if case not in images:
                problems.append(f"labels{part}/{p.name}: no image of that case")
            labelled.add(case)
        if part == "Tr" or labels_dir.is_dir():
            problems += [f"labels{part}: no label for case {c}" for c in sorted(set(images) - labelled)]
        cases[part] = images
        for case in sorted(set(images) & labelled):
            problems += _check_case(images[case], labels_dir / f"{case}{ending}", labels)
    if meta["numTraining"] != len(cases["Tr"]):
        problems.append(f"dataset.json: numTraining {meta['numTraining']} but imagesTr holds {len(cases['Tr'])} cases")
    provenance = folder / "cases.csv"
    if not provenance.is_file():
        return problems + ["cases.csv: missing (the export's provenance)"]
    with open(provenance, newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    test_subjects = {r["subject"] for r in rows.values() if r["role"] == "test"}
    for case in cases["Tr"]:
        row = rows.get(case)
        if row is None:
            problems.append(f"cases.csv: no row for training case {case}")
        elif row["subject"] in test_subjects:
            problems.append(f"imagesTr/{case}: subject {row['subject']} (or its source slice's) is a test subject")
    problems += _check_splits(folder / "splits_final.json", set(cases["Tr"]), rows)
    return problems


def _check_case(image_files: list[Path], label_file: Path, labels: list[int]) -> list[str]:
    problems = []
    label, label_spacing = read_image(label_file)
    values = np.unique(label)
    if not np.isin(values, labels).all():
        problems.append(f"{label_file.name}: label values {values.tolist()} outside the labels {labels}")
    for path in image_files:
        image, spacing = read_image(path)
        geometry = image.shape[: label.ndim] if path.suffix == ".png" else image.shape
        if geometry != label.shape or not np.allclose(spacing, label_spacing):
            problems.append(f"{path.name}: shape {image.shape} / spacing {spacing} differ from its label's "
                            f"{label.shape} / {label_spacing}")
        if not np.isfinite(image).all():
            problems.append(f"{path.name}: holds NaN or Inf")
        if spacing and (image.ndim != 3 or image.shape[2] != 1 or spacing[2] <= max(spacing[:2])):
            problems.append(f"{path.name}: shape {image.shape}, spacing {spacing}: a 2-D case is one slice whose "
                            "through-plane spacing is the largest (else nnU-Net cuts its 2-D patches across it)")
    return problems


def _check_splits(path: Path, training: set[str], rows: dict[str, dict]) -> list[str]:
    try:
        splits = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [f"splits_final.json: unreadable ({exc})"]
    problems, validated = [], []
    for k, fold in enumerate(splits):
        train, val = set(fold.get("train", [])), set(fold.get("val", []))
        unknown = sorted((train | val) - training)
        if unknown:
            problems.append(f"splits_final.json fold {k}: names cases not in imagesTr, e.g. {unknown[0]}")
        if train & val:
            problems.append(f"splits_final.json fold {k}: {sorted(train & val)[0]} is in train and val")
        synthetic = [c for c in val if rows.get(c, {}).get("kind") != "real"]
        if synthetic:
            problems.append(f"splits_final.json fold {k}: validates on synthetic case {synthetic[0]}")
        held = {rows[c]["subject"] for c in val if c in rows}
        crossing = [c for c in train if rows.get(c, {}).get("subject") in held]
        if crossing:
            problems.append(f"splits_final.json fold {k}: {crossing[0]} trains on a validation subject")
        validated += val
    real = {c for c in training if rows.get(c, {}).get("kind") == "real"}
    if sorted(validated) != sorted(real):
        problems.append("splits_final.json: the folds do not validate each real training case exactly once")
    return problems
