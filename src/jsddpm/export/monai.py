"""`jsddpm export monai`: the same cases as `export nnunet`, written with a MONAI datalist.

    OUT/
      datalist.json   {"training": [...], "validation": [...], "test": [...]}, each entry
                      {"image": path, "label": path, "case", "fold"} with paths relative to OUT
                      (`monai.data.load_decathlon_datalist(OUT/datalist.json, data_list_key="training")`
                      makes them absolute); multi-channel images list one file per channel
      imagesTr/, labelsTr/, imagesTs/, labelsTs/   as in the nnU-Net export
      cases.csv, config.yaml, versions.json

Validation is the real subjects of fold `fold` (default 0) of the nnU-Net export's splits; training is
every other training case except synthetic pairs made from those subjects' slices; test is the cache's
test split. `fold` in each training entry is its subject's fold (-1 for synthetic), for cross-validation.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .cases import cases_csv, plan_export, write_cases


def export_monai(real, out, synthetic=(), real_fraction: float = 1.0, min_fidelity: float | None = None,
                 fmt: str = "auto", folds: int = 5, fold: int = 0, seed: int = 0, include_val: bool = False,
                 overwrite: bool = False) -> Path:
    """Write OUT (atomically) with datalist.json; returns OUT. See the module docstring."""
    from ..io import atomic_dir, atomic_write_text, write_run_record

    if not 0 <= fold < folds:
        raise UserError(f"--fold {fold}: give a fold in 0..{folds - 1}")
    plan = plan_export(real, synthetic, real_fraction, min_fidelity, fmt, folds, seed, include_val)
    split = plan.splits()[fold]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        files = write_cases(tmp, plan)

        def entry(case) -> dict:
            images, label = files[case.name]
            paths = [str(p.relative_to(tmp)) for p in images]
            return {"image": paths[0] if len(paths) == 1 else paths, "label": str(label.relative_to(tmp)),
                    "case": case.name, "fold": case.fold}

        by_name = {c.name: c for c in plan.cases}
        datalist = {
            "description": f"jsddpm export of {plan.cache.root}; validation = fold {fold} of {folds} (real "
                           "subjects only); provenance in cases.csv",
            "training": [entry(by_name[n]) for n in split["train"]],
            "validation": [entry(by_name[n]) for n in split["val"]],
            "test": [entry(c) for c in plan.test],
        }
        atomic_write_text(tmp / "datalist.json", json.dumps(datalist, indent=1) + "\n")
        atomic_write_text(tmp / "cases.csv", cases_csv(plan))
        write_run_record(tmp)
    print(f"export monai: {len(datalist['training'])} training, {len(datalist['validation'])} validation, "
          f"{len(datalist['test'])} test cases ({plan.fmt}) -> {Path(out) / 'datalist.json'}")
    for line in plan.summary():
        print(line)
    return Path(out)
