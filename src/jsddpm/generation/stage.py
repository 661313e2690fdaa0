"""The `jsddpm generate` stage: checkpoint + spec -> a generation folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint
from ..errors import UserError
from .outputs import write_grids, write_nifti, write_samples
from .sampling import sample_devices, sample_sharded
from .spec import expand, parse_spec, sample_seeds


def resolve_generation_config(ckpt: Checkpoint, config_path: str | None = None, overrides=(),
                              extra_sections: tuple[str, ...] = ()) -> Any:
    """The training config stored in the checkpoint, with the `sample` section of `config_path` (when
    given) and `sample.*` overrides on top. The network and its diffusion maths stay the checkpoint's,
    so the saved config.yaml records the factors (prediction type, loss) that made these samples.
    `extra_sections` (e.g. "inpaint") are taken from `config_path` and overrides like `sample`."""
    from omegaconf import OmegaConf

    from ..config import load_config, validate

    sections = ("sample", *extra_sections)
    bad = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] not in sections]
    if bad:
        allowed = " / ".join(f"{s}.*" for s in sections)
        raise UserError(f"override '{bad[0]}': this command takes only {allowed} overrides "
                        "(the model and diffusion settings come from the checkpoint)")
    load_config(None, list(overrides))  # key names and types checked against the schema
    given = load_config(config_path) if config_path is not None else None
    cfg = OmegaConf.merge(ckpt.config, {s: given[s] for s in sections} if given is not None else {},
                          OmegaConf.from_dotlist(list(overrides)))
    where = config_path or "command-line overrides"
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


def generate(ckpt_path: str | Path, out: str | Path, spec: Any = None, config_path: str | None = None,
             overrides=(), overwrite: bool = False, source: str | Path | None = None,
             split: str = "train") -> Path:
    """The `jsddpm generate` stage. Returns the output folder.

    With a `source` cache, every sample starts from a real slice of its `split` at the sample's z-bin and
    class (`sources.sdedit_source_rows`, recorded as `source_index`), noised to sample.strength (SDEdit);
    strength 1 starts from pure noise and gives exactly the samples of plain generation."""
    from ..io import atomic_dir, write_run_record
    from .sources import diffusion_data, open_source_cache, sdedit_source_rows

    check_output_folder(out, overwrite, (ckpt_path, source))
    ckpt = Checkpoint.load(ckpt_path)
    cfg = resolve_generation_config(ckpt, config_path, overrides)
    conditions = parse_spec(spec, int(cfg.data.n_zbins), int(cfg.model.num_classes), ckpt.classes,
                            int(cfg.sample.n_per_condition))
    zbins, labels, indices = expand(conditions)
    if len(zbins) == 0:
        raise UserError("the spec asks for no samples; give some counts > 0")
    if float(cfg.sample.strength) < 1.0 and source is None:
        raise UserError(f"sample.strength={cfg.sample.strength} (SDEdit) varies real slices: give --source CACHE")
    extra, sources = {}, None
    if source is not None:  # at strength 1 the sources are drawn and recorded but not used: plain generation
        cache = open_source_cache(source, split, cfg, ckpt.classes)
        rows = sdedit_source_rows(cache, split, zbins, labels, indices, int(cfg.sample.seed),
                                  int(cfg.model.num_classes) > 0)
        sources, extra = diffusion_data(cache, rows, bool(cfg.model.joint_mask)), {"source_index": rows}
    devices = sample_devices(str(cfg.sample.device))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        images = sample_sharded(ckpt, cfg, zbins, labels, indices, devices, sources)
        write_samples(tmp / "samples.npz", images, zbins, labels, int(cfg.data.n_zbins), index=indices,
                      seed=sample_seeds(int(cfg.sample.seed), zbins, labels, indices),
                      cache_fingerprint=ckpt.cache_fingerprint, **extra)
        write_grids(tmp, images, zbins, labels, bool(cfg.model.joint_mask), ckpt.classes)
        if cfg.sample.export_nifti:
            write_nifti(tmp, images, bool(cfg.model.joint_mask), ckpt.spacing_mm)
        write_run_record(tmp, cfg)
    print(f"generate: {len(images)} samples -> {Path(out) / 'samples.npz'}")
    return Path(out)
