"""The `jsddpm generate` stage: checkpoint + spec -> a generation folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import Checkpoint
from ..errors import UserError
from .outputs import write_grids, write_nifti, write_samples
from .sampling import sample_devices, sample_sharded
from .spec import expand, parse_spec, sample_seeds


def resolve_generation_config(ckpt: Checkpoint, config: Any = None, overrides=(),
                              extra_sections: tuple[str, ...] = ()) -> Any:
    """The training config stored in the checkpoint, with the `sample` section of `config` (a config file or
    preset, or a loaded config, e.g. the pipeline's own; when given) and `sample.*` overrides on top. The
    network and its diffusion maths stay the checkpoint's, so the saved config.yaml records the factors
    (prediction type, loss) that made these samples. `extra_sections` (e.g. "inpaint") are taken from
    `config` and overrides like `sample`."""
    from omegaconf import OmegaConf

    from ..config import load_config, validate

    sections = ("sample", *extra_sections)
    bad = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] not in sections]
    if bad:
        allowed = " / ".join(f"{s}.*" for s in sections)
        raise UserError(f"override '{bad[0]}': this command takes only {allowed} overrides "
                        "(the model and diffusion settings come from the checkpoint)")
    load_config(None, list(overrides))  # key names and types checked against the schema
    from_file = isinstance(config, (str, Path))
    given = load_config(config) if from_file else config
    cfg = OmegaConf.merge(ckpt.config, {s: given[s] for s in sections} if given is not None else {},
                          OmegaConf.from_dotlist(list(overrides)))
    where = str(config) if from_file else "command-line overrides" if config is None else "the given config"
    validate(cfg, where)
    if cfg.sample.n_per_condition < 0 or cfg.sample.guidance_scale < 0:
        raise UserError(f"{where}: sample.n_per_condition and sample.guidance_scale must be >= 0")
    return cfg


def check_output_folder(out: str | Path, overwrite: bool, inputs: tuple[str | Path, ...] = ()) -> None:
    """Refuse, before any work, an --out that can never receive the result: an existing file, or (with
    --overwrite) the working folder, a folder above it, or one holding an input about to be read."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is a file, not a folder; choose another --out")
    if overwrite and out.exists():
        target = out.resolve()
        cwd = Path(os.getcwd()).resolve()
        if target == cwd or target in cwd.parents:
            raise UserError(f"{out}: --overwrite cannot replace the working folder or a folder above it; "
                            "give --out a sub-folder")
        for path in inputs:
            if path is not None and target in Path(path).resolve().parents:
                raise UserError(f"{out}: --overwrite would delete the input {path}; choose another --out")


def generate(ckpt_path: str | Path, out: str | Path, spec: Any = None, config: Any = None,
             overrides=(), overwrite: bool = False, source: str | Path | None = None,
             split: str = "train", masks: str | None = None, cache: str | Path | None = None,
             mask_zbins: str | None = None) -> Path:
    """The `jsddpm generate` stage. Returns the output folder.

    With a `source` cache, every sample starts from a real slice of its `split` at the sample's z-bin and
    class (`sources.sdedit_source_rows`, recorded as `source_index`), noised to sample.strength (SDEdit);
    strength 1 starts from pure noise and gives exactly the samples of plain generation.

    `masks` (bank | generated | a path; a mask-conditioned checkpoint) draws each image given a mask
    (`masks.py`); `cache` is the checkpoint's training cache that the bank and the fidelity filter read
    (default: its data.cache_dir; checked by fingerprint). sample.min_fidelity / sample.score_fidelity
    score every pair with the reference segmenter (`fidelity.py`)."""
    from ..io import atomic_dir, write_run_record
    from .fidelity import draw_faithful, fidelity_scorer, write_fidelity_csv
    from .masks import check_mask_request, is_mask_file, mask_plan, mask_stage_seeds
    from .sources import diffusion_data, open_source_cache, sdedit_source_rows, training_cache

    check_output_folder(out, overwrite, (ckpt_path, source, cache, masks if is_mask_file(masks) else None))
    ckpt = Checkpoint.load(ckpt_path)
    cfg = resolve_generation_config(ckpt, config, overrides)
    check_mask_request(masks, ckpt, mask_zbins)
    plan = None
    if is_mask_file(masks):
        if spec is not None:
            raise UserError(f"--spec: with --masks {masks} there is one sample per given mask; drop --spec")
        plan = mask_plan(masks, ckpt, cfg, None, zbins_flag=mask_zbins)
        zbins, labels, indices = plan.zbins, plan.labels, plan.indices
    else:
        conditions = parse_spec(spec, int(cfg.data.n_zbins), int(cfg.model.num_classes), ckpt.classes,
                                int(cfg.sample.n_per_condition))
        zbins, labels, indices = expand(conditions)
    if len(zbins) == 0:
        raise UserError("the spec asks for no samples; give some counts > 0")
    if float(cfg.sample.strength) < 1.0 and source is None:
        raise UserError(f"sample.strength={cfg.sample.strength} (SDEdit) varies real slices: give --source CACHE")
    scoring = cfg.sample.min_fidelity is not None or bool(cfg.sample.score_fidelity)
    if cache is not None and not (masks == "bank" or scoring):
        raise UserError("--cache: read only by --masks bank and the fidelity filter (sample.min_fidelity, "
                        "sample.score_fidelity); drop it")
    train_cache = None
    if masks == "bank" or scoring:  # the bank's masks and the reference segmenter: its training split
        train_cache = training_cache(cache, ckpt, cfg, require_fingerprint=masks == "bank")
    if masks is not None and plan is None:
        plan = mask_plan(masks, ckpt, cfg, (zbins, labels, indices), train_cache)
    extra, sources = {}, None
    if source is not None:  # at strength 1 the sources are drawn and recorded but not used: plain generation
        source_cache = open_source_cache(source, split, cfg, ckpt.classes)
        rows = sdedit_source_rows(source_cache, split, zbins, labels, indices, int(cfg.sample.seed),
                                  int(cfg.model.num_classes) > 0)
        sources, extra = diffusion_data(source_cache, rows, bool(cfg.model.joint_mask)), {"source_index": rows}
    score = fidelity_scorer(train_cache, cfg, ckpt) if scoring else None
    devices = sample_devices(str(cfg.sample.device))

    def draw(positions: np.ndarray, seeds: np.ndarray) -> dict:
        at = (zbins[positions], labels[positions], indices[positions])
        given = None if plan is None else plan.masks(positions, seeds)
        if plan is not None and given is None:  # generated: the joint mode draws the masks first
            pairs = sample_sharded(ckpt, cfg, *at, devices, seeds=mask_stage_seeds(seeds))
            given = pairs[:, -1:].copy()
        return {"images": sample_sharded(ckpt, cfg, *at, devices, None if sources is None else sources[positions],
                                         seeds=seeds, masks=given)}

    with atomic_dir(out, overwrite=overwrite) as tmp:
        result = draw_faithful(draw, sample_seeds(int(cfg.sample.seed), zbins, labels, indices), score,
                               cfg.sample.min_fidelity, int(cfg.sample.fidelity_tries),
                               progress=lambda msg: print(msg, flush=True))
        kept, images = result.kept, result.arrays["images"]
        fields = {k: v[kept] for k, v in extra.items()}
        fields.update(result.fields())
        if plan is not None:
            fields.update(plan.fields(kept))
        write_samples(tmp / "samples.npz", images, zbins[kept], labels[kept], int(cfg.data.n_zbins),
                      index=indices[kept], seed=result.seeds, cache_fingerprint=ckpt.cache_fingerprint, **fields)
        if score is not None:
            write_fidelity_csv(tmp / "fidelity.csv", result, {"zbin": zbins, "label": labels, "index": indices})
            print(result.summary(), flush=True)
        write_grids(tmp, images, zbins[kept], labels[kept], bool(cfg.model.joint_mask), ckpt.classes)
        if cfg.sample.export_nifti:
            write_nifti(tmp, images, bool(cfg.model.joint_mask), ckpt.spacing_mm)
        write_run_record(tmp, cfg)
    what = f" ({plan.source} masks)" if plan is not None else ""
    print(f"generate: {len(images)} samples{what} -> {Path(out) / 'samples.npz'}")
    return Path(out)
