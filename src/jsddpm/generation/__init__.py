"""Checkpoint -> synthetic set: spec of counts per (z-bin, class), batched deterministic sampling,
samples.npz, PNG grids, optional NIfTI; inpainting lesions into real slices.

Modules: `spec` (what to draw), `sampling` (drawing it), `outputs` (writing it), `sources` (real slices
to start from: SDEdit and inpainting), `stage` (the `jsddpm generate` command's work), `inpaint` (the
`jsddpm inpaint` command's work). Checkpoint reading lives in `jsddpm.checkpoint`, below both training
and generation.

Notebook use::

    from jsddpm.generation import load_checkpoint, model_from_checkpoint, sample_conditions
    ckpt = load_checkpoint("runs/train/checkpoints/best.ckpt")
    net, cfg = model_from_checkpoint(ckpt)                       # EMA weights by default
    images = sample_conditions(net, cfg, ckpt, zbins=[5, 5], labels=[0, 1], indices=[0, 0])
"""

from ..checkpoint import config_from_checkpoint, load_checkpoint, model_from_checkpoint
from .outputs import save_png, to_uint8, triplet_grid, write_grids, write_nifti, write_samples
from .sampling import (
    postprocess,
    sample_batch,
    sample_conditions,
    sample_devices,
    sample_sharded,
)
from .spec import Condition, expand, parse_spec, read_spec, sample_seeds
from .stage import generate, resolve_generation_config

__all__ = [
    "Condition",
    "config_from_checkpoint",
    "expand",
    "generate",
    "load_checkpoint",
    "model_from_checkpoint",
    "parse_spec",
    "postprocess",
    "read_spec",
    "resolve_generation_config",
    "sample_batch",
    "sample_conditions",
    "sample_devices",
    "sample_seeds",
    "sample_sharded",
    "save_png",
    "to_uint8",
    "triplet_grid",
    "write_grids",
    "write_nifti",
    "write_samples",
]
