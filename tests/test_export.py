"""`jsddpm export nnunet / monai`: the documented dataset format, round trips of the pixels, leak-free
splits, and every refusal. nnU-Net's own integrity check and MONAI's datalist loader run where they are
importable: in this interpreter, or in the one JSDDPM_SEGMENTER_PYTHON names, e.g. a throwaway venv that
leaves this one's CPU torch alone:

    python3 -m venv /tmp/seg && /tmp/seg/bin/pip install torch==2.13.0 numpy pandas nibabel SimpleITK
    /tmp/seg/bin/pip install --no-deps nnunetv2 monai batchgenerators acvl_utils scikit-image scipy pillow \
        tifffile lazy_loader blosc2 msgpack ndindex httpx idna
    JSDDPM_SEGMENTER_PYTHON=/tmp/seg/bin/python pytest tests/test_export.py
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from jsddpm.cli import main
from jsddpm.data.cache import load_cache
from jsddpm.export import check_nnunet_dataset, export_monai, export_nnunet
from jsddpm.generation.outputs import slices_to_ras, write_samples
from jsddpm.imaging import to_uint8

N_SYN = 24


def write_synthetic(folder: Path, cache_dir: Path, fingerprint=True, fidelity=True, rows=None, **extra) -> Path:
    """A samples.npz as `jsddpm inpaint` writes it: pairs made from real training slices (source_index),
    here the slices themselves with a little noise; fidelity scores with two unscored (NaN)."""
    cache = load_cache(cache_dir)
    rng = np.random.default_rng(1)
    if rows is None:  # half of them lesion slices
        train = cache.indices("train")
        lesion = train[cache.index["has_lesion"][train] == 1]
        rows = np.concatenate([rng.choice(lesion, N_SYN // 2, replace=len(lesion) < N_SYN // 2),
                               rng.choice(np.setdiff1d(train, lesion), N_SYN - N_SYN // 2, replace=False)])
    rows = np.asarray(rows)
    pairs = cache.joint(rows)
    pairs[:, :-1] = np.clip(pairs[:, :-1] + 0.05 * rng.standard_normal(pairs[:, :-1].shape), -1, 1)
    fields = dict(index=np.arange(len(rows)), source_index=rows, **extra)
    if fidelity:
        scores = np.linspace(0, 1, len(rows))
        scores[:2] = np.nan
        fields["fidelity"] = scores
    if fingerprint:
        fields["cache_fingerprint"] = np.asarray(cache.fingerprint)
    folder.mkdir(parents=True)
    write_samples(folder / "samples.npz", pairs.astype(np.float32), cache.index["zbin"][rows],
                  cache.index["label"][rows], cache.n_zbins, **fields)
    return folder


@pytest.fixture(scope="module")
def exported(demo_cache, tmp_path_factory):
    """One nnU-Net export of the demo cache + a synthetic set: (dataset folder, synthetic folder)."""
    root = tmp_path_factory.mktemp("export")
    syn = write_synthetic(root / "gen", demo_cache)
    return export_nnunet(demo_cache, root / "raw", 501, "Demo", synthetic=[syn]), syn


def read_cases(dataset: Path) -> dict[str, dict]:
    with open(dataset / "cases.csv", newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def segmenter_python(module: str) -> str:
    """An interpreter that imports `module`, or skip (with the reason pytest -rs prints)."""
    candidates = [sys.executable] + ([os.environ["JSDDPM_SEGMENTER_PYTHON"]]
                                     if os.environ.get("JSDDPM_SEGMENTER_PYTHON") else [])
    for python in candidates:
        if subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0:
            return python
    pytest.skip(f"{module} is not importable here; set JSDDPM_SEGMENTER_PYTHON to an interpreter that has it "
                "(see this file's docstring)")


# ------------------------------------------------------------------------------------ nnU-Net
def test_nnunet_export_follows_the_documented_format(exported, demo_cache):
    dataset, _ = exported
    cache = load_cache(demo_cache)
    assert dataset.name == "Dataset501_Demo"
    assert check_nnunet_dataset(dataset) == []
    meta = json.loads((dataset / "dataset.json").read_text())
    n_train = len(cache.indices("train"))
    assert meta["channel_names"] == {"0": "MRI"} and meta["labels"] == {"background": 0, "lesion": 1}
    assert meta["file_ending"] == ".nii.gz" and meta["numTraining"] == n_train + N_SYN
    assert len(list((dataset / "imagesTr").iterdir())) == n_train + N_SYN
    assert len(list((dataset / "labelsTs").iterdir())) == len(cache.indices("test"))


def test_real_and_synthetic_pixels_round_trip_at_the_cache_spacing(exported, demo_cache):
    dataset, syn = exported
    cache = load_cache(demo_cache)
    rows = read_cases(dataset)
    samples = np.load(syn / "samples.npz")
    test = next(c for c, r in rows.items() if r["role"] == "test")
    lesion = next(c for c, r in rows.items() if r["kind"] == "real" and r["role"] == "train" and r["label"] == "1")
    synthetic = next(c for c, r in rows.items() if r["kind"] == "synthetic" and r["label"] == "1")
    for case in (test, lesion, synthetic):
        r = rows[case]
        part = "Tr" if r["role"] == "train" else "Ts"
        image = nib.load(dataset / f"images{part}" / f"{case}_0000.nii.gz")
        label = nib.load(dataset / f"labels{part}" / f"{case}.nii.gz")
        if r["kind"] == "real":
            expected = cache.joint([int(r["cache_row"])])[0]
        else:
            expected = samples["images"][int(r["sample_row"])]
        mask = slices_to_ras((expected[-1:] > 0).astype(np.uint8))
        np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), slices_to_ras(expected[:1]))
        np.testing.assert_array_equal(np.asanyarray(label.dataobj), mask)
        assert label.get_data_dtype() == np.uint8 and (mask.any() or r["role"] == "test")
        in_plane = cache.stats["spacing_mm"][:2]
        assert image.header.get_zooms() == pytest.approx((*in_plane, 999.0))  # nnU-Net slices along the largest
        np.testing.assert_allclose(image.affine, label.affine)


def test_no_test_subject_trains_and_validation_is_real_and_subject_disjoint(exported, demo_cache):
    dataset, syn = exported
    cache = load_cache(demo_cache)
    rows = read_cases(dataset)
    test_subjects = set(cache.index["subject_id"][cache.indices("test")])
    training = {p.name[: -len("_0000.nii.gz")] for p in (dataset / "imagesTr").iterdir()}
    assert {rows[c]["subject"] for c in training}.isdisjoint(test_subjects)
    assert {rows[c]["subject"] for c in training if rows[c]["kind"] == "real"} == set(
        cache.index["subject_id"][cache.indices("train")])
    splits = json.loads((dataset / "splits_final.json").read_text())
    assert len(splits) == 5
    held_out = []
    for fold in splits:
        val_subjects = {rows[c]["subject"] for c in fold["val"]}
        assert all(rows[c]["kind"] == "real" for c in fold["val"])
        assert val_subjects.isdisjoint(rows[c]["subject"] for c in fold["train"])
        held_out += [c for c in training if c not in fold["train"] and c not in fold["val"]]
    real = sorted(c for c in training if rows[c]["kind"] == "real")
    assert sorted(c for fold in splits for c in fold["val"]) == real
    # pairs inpainted into a validation subject's slices leave that fold's training cases
    assert held_out and all(rows[c]["kind"] == "synthetic" for c in held_out)
    provenance = [rows[c] for c in training if rows[c]["kind"] == "synthetic"]
    samples = np.load(syn / "samples.npz")
    for r in provenance:
        assert int(r["source_row"]) == samples["source_index"][int(r["sample_row"])]
        assert r["subject"] == cache.index["subject_id"][int(r["source_row"])]
        assert r["source"] == str(syn.resolve())


def _drop_label(d: Path) -> None:
    next((d / "labelsTr").iterdir()).unlink()


def _foreign_label(d: Path) -> None:
    path = next((d / "labelsTr").iterdir())
    img = nib.load(path)
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = 2
    nib.save(nib.Nifti1Image(data, img.affine), path)


def _thin_slice(d: Path) -> None:
    path = next((d / "imagesTr").iterdir())
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), np.diag([3.5, 3.5, 3.0, 1.0])), path)


def _wrong_count(d: Path) -> None:
    meta = json.loads((d / "dataset.json").read_text())
    meta["numTraining"] += 1
    (d / "dataset.json").write_text(json.dumps(meta))


def _synthetic_validation(d: Path) -> None:
    splits = json.loads((d / "splits_final.json").read_text())
    syn = next(c for c in splits[0]["train"] if c.startswith("syn"))
    splits[0]["train"].remove(syn)
    splits[0]["val"].append(syn)
    (d / "splits_final.json").write_text(json.dumps(splits))


def _test_subject_in_training(d: Path) -> None:
    rows = read_cases(d)
    case = next(c for c, r in rows.items() if r["role"] == "test")
    for part, suffix in (("images", "_0000.nii.gz"), ("labels", ".nii.gz")):
        shutil.copy(d / f"{part}Ts" / f"{case}{suffix}", d / f"{part}Tr" / f"leak{suffix}")
    rows["leak"] = dict(rows[case], case="leak", role="train")
    with open(d / "cases.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[case]))
        writer.writeheader()
        writer.writerows(rows.values())
    meta = json.loads((d / "dataset.json").read_text())
    meta["numTraining"] += 1
    (d / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, expected", [
    (_drop_label, "labelsTr: no label for case"),
    (_foreign_label, ", 2] outside the labels [0, 1]"),
    (_thin_slice, "through-plane spacing is the largest"),
    (_wrong_count, "numTraining"),
    (_synthetic_validation, "validates on synthetic case"),
    (_test_subject_in_training, "imagesTr/leak: subject"),
])
def test_the_format_rules_catch_what_they_promise(exported, tmp_path, damage, expected):
    copy = tmp_path / "Dataset501_Demo"
    shutil.copytree(exported[0], copy)
    damage(copy)
    problems = check_nnunet_dataset(copy)
    assert any(expected in p for p in problems), problems


def test_nnunet_integrity_check_passes(exported, tmp_path):
    """nnU-Net v2's own verify_dataset_integrity on the export."""
    python = segmenter_python("nnunetv2.experiment_planning.verify_dataset_integrity")
    script = ("import sys\nfrom nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity\n"
              "if __name__ == '__main__':\n    verify_dataset_integrity(sys.argv[1], num_processes=1)\n")
    env = dict(os.environ, nnUNet_raw=str(exported[0].parent), nnUNet_preprocessed=str(tmp_path),
               nnUNet_results=str(tmp_path), OMP_NUM_THREADS="1")
    (tmp_path / "verify.py").write_text(script)
    proc = subprocess.run([python, str(tmp_path / "verify.py"), str(exported[0])], capture_output=True, text=True,
                          env=env, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "verify_dataset_integrity Done" in proc.stdout, log[-3000:]
    assert "Error" not in proc.stdout and "WARNING: Affine" not in proc.stdout


# ------------------------------------------------------------------------------------ options
def test_min_fidelity_keeps_scored_pairs_at_or_above_it(demo_cache, tmp_path, capsys):
    syn = write_synthetic(tmp_path / "gen", demo_cache)
    scores = np.load(syn / "samples.npz")["fidelity"]
    dataset = export_nnunet(demo_cache, tmp_path / "raw", 502, "Fid", synthetic=[syn], min_fidelity=0.5, folds=2)
    kept = sorted(int(r["sample_row"]) for r in read_cases(dataset).values() if r["kind"] == "synthetic")
    assert kept == np.flatnonzero(scores >= 0.5).tolist()  # NaN (unscored) pairs do not pass
    assert f"kept {len(kept)} of {N_SYN} pairs ({N_SYN - 2 - len(kept)} below, 2 not scored)" in capsys.readouterr().out


def test_real_fraction_takes_a_stratified_subject_subset(demo_cache, tmp_path):
    cache = load_cache(demo_cache)
    train = cache.indices("train")
    subjects = set(cache.index["subject_id"][train])
    dataset = export_nnunet(demo_cache, tmp_path / "raw", 503, "Half", real_fraction=0.5, folds=2)
    rows = read_cases(dataset).values()
    picked = {r["subject"] for r in rows if r["role"] == "train"}
    assert picked < subjects and len(picked) == len(subjects) // 2
    groups = {cache.index["subject_id"][i]: cache.index["group"][i] for i in train}
    assert {groups[s] for s in picked} == set(groups.values())  # every group keeps subjects
    assert sum(r["role"] == "train" for r in rows) == np.isin(cache.index["subject_id"][train], list(picked)).sum()


def test_png_export_for_nnunet_s_natural_image_reader(demo_cache, tmp_path):
    dataset = export_nnunet(demo_cache, tmp_path / "raw", 504, "Png", fmt="png", folds=2)
    assert check_nnunet_dataset(dataset) == []
    assert json.loads((dataset / "dataset.json").read_text())["file_ending"] == ".png"
    cache = load_cache(demo_cache)
    case, r = next((c, r) for c, r in read_cases(dataset).items() if r["class"] == "lesion" and r["role"] == "train")
    pair = cache.joint([int(r["cache_row"])])[0]
    image, label = (np.asarray(Image.open(dataset / f"{part}Tr" / name)) for part, name in
                    (("images", f"{case}_0000.png"), ("labels", f"{case}.png")))
    np.testing.assert_array_equal(image, to_uint8(pair[0]))
    np.testing.assert_array_equal(label, pair[1] > 0)


# ------------------------------------------------------------------------------------ refusals
def one_line(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def test_a_set_from_another_cache_is_refused(demo_cache, tmp_path, capsys):
    syn = write_synthetic(tmp_path / "gen", demo_cache, fingerprint=False, cache_fingerprint=np.asarray("0123abcd"))
    code, line = one_line(capsys, "export", "nnunet", "--real", demo_cache, "--out", tmp_path / "raw",
                          "--dataset-id", 505, "--name", "X", "--synthetic", syn)
    assert code == 2 and "made by a model trained on another cache (fingerprint 0123abcd" in line
    assert not (tmp_path / "raw").exists()


def test_an_unfingerprinted_set_falls_back_to_its_config_with_a_note(demo_cache, tmp_path, capsys):
    ours = write_synthetic(tmp_path / "ours", demo_cache, fingerprint=False)
    (ours / "config.yaml").write_text(f"data:\n  cache_dir: {demo_cache}\n")
    export_monai(demo_cache, tmp_path / "m", synthetic=[ours], folds=2)
    assert "provenance could not be verified" in capsys.readouterr().out
    other = tmp_path / "other_cache"
    shutil.copytree(demo_cache, other)
    (other / "stats.json").write_text((other / "stats.json").read_text() + " ")  # another fingerprint
    theirs = write_synthetic(tmp_path / "theirs", demo_cache, fingerprint=False)
    (theirs / "config.yaml").write_text(f"data:\n  cache_dir: {other}\n")
    code, line = one_line(capsys, "export", "monai", "--real", demo_cache, "--out", tmp_path / "m2",
                          "--synthetic", theirs, "--folds", 2)
    assert code == 2 and f"made by a model trained on {other} (config.yaml data.cache_dir)" in line


def test_pairs_made_from_test_slices_are_refused(demo_cache, tmp_path, capsys):
    cache = load_cache(demo_cache)
    syn = write_synthetic(tmp_path / "gen", demo_cache, rows=cache.indices("test")[:3])
    code, line = one_line(capsys, "export", "nnunet", "--real", demo_cache, "--out", tmp_path / "raw",
                          "--dataset-id", 506, "--name", "X", "--synthetic", syn)
    assert code == 2 and "3 pair(s) were made from test-split slices" in line


@pytest.mark.parametrize("args, expected", [
    (["--min-fidelity", "0.5", "--unscored"], "its pairs have no fidelity scores"),
    (["--dataset-id", "1000"], "--dataset-id 1000: nnU-Net dataset ids are 1..999"),
    (["--name", "a b"], "--name 'a b': use letters, digits"),
    (["--folds", "9"], "--folds 9: only 6 real training subject(s)"),
    (["--real-fraction", "0"], "--real-fraction 0.0: give a fraction"),
])
def test_bad_options_are_refused_in_one_line(demo_cache, tmp_path, capsys, args, expected):
    unscored = "--unscored" in args
    args = [a for a in args if a != "--unscored"]
    syn = write_synthetic(tmp_path / "gen", demo_cache, fidelity=not unscored)
    base = {"--dataset-id": "507", "--name": "X"}
    base.update(dict(zip(args[::2], args[1::2])))
    code, line = one_line(capsys, "export", "nnunet", "--real", demo_cache, "--out", tmp_path / "raw",
                          "--synthetic", syn, *[x for kv in base.items() for x in kv])
    assert code == 2 and expected in line, line


def test_a_taken_dataset_id_is_refused(demo_cache, tmp_path, capsys):
    (tmp_path / "raw" / "Dataset508_Other").mkdir(parents=True)
    code, line = one_line(capsys, "export", "nnunet", "--real", demo_cache, "--out", tmp_path / "raw",
                          "--dataset-id", 508, "--name", "Mine", "--folds", 2)
    assert code == 2 and "nnU-Net dataset id 508 is taken" in line


# ------------------------------------------------------------------------------------ MONAI
def test_monai_datalist_matches_the_nnunet_split(exported, demo_cache, tmp_path):
    dataset, syn = exported
    out = export_monai(demo_cache, tmp_path / "monai", synthetic=[syn])
    datalist = json.loads((out / "datalist.json").read_text())
    fold0 = json.loads((dataset / "splits_final.json").read_text())[0]
    assert sorted(e["case"] for e in datalist["training"]) == fold0["train"]
    assert sorted(e["case"] for e in datalist["validation"]) == fold0["val"]
    cache = load_cache(demo_cache)
    assert len(datalist["test"]) == len(cache.indices("test"))
    for entry in datalist["training"] + datalist["validation"] + datalist["test"]:
        assert (out / entry["image"]).is_file() and (out / entry["label"]).is_file()
    assert all(e["fold"] == -1 for e in datalist["training"] if e["case"].startswith("syn"))


def test_monai_loads_the_datalist(demo_cache, tmp_path):
    """MONAI's own load_decathlon_datalist and LoadImaged read the export."""
    python = segmenter_python("monai")
    out = export_monai(demo_cache, tmp_path / "monai", folds=2)
    script = ("import sys\nfrom monai.data import load_decathlon_datalist\nfrom monai.transforms import LoadImaged\n"
              "n = 0\nfor key in ('training', 'validation', 'test'):\n"
              "    items = load_decathlon_datalist(sys.argv[1], data_list_key=key)\n"
              "    d = LoadImaged(keys=['image', 'label'])(items[0])\n"
              "    assert d['image'].shape == d['label'].shape, (d['image'].shape, d['label'].shape)\n"
              "    n += len(items)\nprint('loaded', n)\n")
    proc = subprocess.run([python, "-c", script, str(out / "datalist.json")], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    cache = load_cache(demo_cache)
    assert f"loaded {len(cache.indices('train')) + len(cache.indices('test'))}" in proc.stdout


# ------------------------------------------------------------------------------------ end to end
def test_an_inpaint_folder_exports_with_its_source_subjects(demo_cache, tmp_path, capsys, one_thread):
    """A real `jsddpm inpaint` output (tiny random model) -> `jsddpm export nnunet` -> the format rules."""
    from conftest import write_random_checkpoint
    from test_inpaint import TINY64

    from jsddpm.config import load_config

    cache = load_cache(demo_cache)
    cfg = load_config(None, [*TINY64, f"data.cache_dir={demo_cache}"])
    ckpt = write_random_checkpoint(tmp_path / "last.ckpt", cfg, 0.1, cache.classes, cache.priors,
                                   cache.stats["spacing_mm"])
    assert main(["inpaint", "--ckpt", str(ckpt), "--source", str(demo_cache), "--out", str(tmp_path / "inp"),
                 "--n", "3"]) == 0
    assert main(["export", "nnunet", "--real", str(demo_cache), "--synthetic", str(tmp_path / "inp"),
                 "--out", str(tmp_path / "raw"), "--dataset-id", "509", "--name", "Inp", "--folds", "2"]) == 0
    dataset = tmp_path / "raw" / "Dataset509_Inp"
    assert check_nnunet_dataset(dataset) == []
    rows = [r for r in read_cases(dataset).values() if r["kind"] == "synthetic"]
    sources = np.load(tmp_path / "inp" / "samples.npz")["source_index"]
    assert [int(r["source_row"]) for r in rows] == sources.tolist()
    assert [r["subject"] for r in rows] == cache.index["subject_id"][sources].tolist()
