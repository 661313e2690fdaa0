"""Checkpoint -> synthetic set: spec of counts per (z-bin, class), batched deterministic sampling,
samples.npz, PNG grids, optional NIfTI; inpainting lesions into real slices.

Modules: `spec` (what to draw), `sampling` (drawing it), `outputs` (writing it), `sources` (real slices
to start from: SDEdit and inpainting; the training-split lesion-mask bank), `masks` (generate --masks:
bank, generated, the user's files), `fidelity` (the fidelity filter), `stage` (the `jsddpm generate`
command's work), `inpaint` (the `jsddpm inpaint` command's work). Checkpoint reading lives in
`jsddpm.checkpoint`, below both training and generation.

Notebook use::

    from jsddpm.generation import Checkpoint, sample_conditions
    ckpt = Checkpoint.load("runs/train/checkpoints/best.ckpt")
    net = ckpt.model()                                           # EMA weights by default
    images = sample_conditions(net, ckpt.config, ckpt, zbins=[5, 5], labels=[0, 1], indices=[0, 0])
"""

from ..checkpoint import Checkpoint
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
    "Checkpoint",
    "Condition",
    "expand",
    "generate",
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
