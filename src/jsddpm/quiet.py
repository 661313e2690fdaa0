"""Silence third-party noise that says nothing to a jsddpm user; never our own warnings.

What goes, and why:
- Lightning's start-up lines "GPU available: ...", "TPU available: ...", "HPU available: ..." and
  "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: ...": the device in use is chosen by `train.accelerator`;
- Lightning's "Tip: ... litlogger" advertisement;
- torch's FutureWarning about `isinstance(treespec, LeafSpec)`, raised inside Lightning's own code;
- torch's DeprecationWarnings on `torch.jit.load/save/script` (a local TorchScript feature
  extractor is a supported input; the user cannot act on torch's plan to drop it);
- Lightning's "Checkpoint directory ... exists and is not empty" on every resume (resuming in the
  run's own folder is what `train.resume=auto` is for), and its "`ModelCheckpoint(monitor='val/loss')` could
  not find the monitored key" when a fit ends or saves between validations (best.ckpt follows them).

Everything else Lightning logs (checkpoint restores, why `fit` stopped, the precision in use) stays.
`install()` is idempotent: the CLI calls it first, `train()` again for library use.
"""

from __future__ import annotations

import logging
import warnings

# Lightning's rank-zero messages go through these loggers (the fabric and trainer copies)
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                     "pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")
DROPPED_PREFIXES = ("GPU available:", "TPU available:", "HPU available:", "IPU available:", "LOCAL_RANK:",
                    "💡 Tip:")
WARNING_FILTERS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"`torch\.jit\.\w+` is deprecated", DeprecationWarning),
    # train.resume=auto continues in its own folder on purpose
    (r"Checkpoint directory .* exists and is not empty", UserWarning),
    # best.ckpt follows the validations; a step-count checkpoint or the end of a fit may come before one
    (r"`ModelCheckpoint\(monitor='val/loss'\)` could not find the monitored key", UserWarning),
)


class DropLightningBanners(logging.Filter):
    """Drops the start-up banner lines listed in DROPPED_PREFIXES; lets every other record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(DROPPED_PREFIXES)


def install() -> None:
    for message, category in WARNING_FILTERS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in LIGHTNING_LOGGERS:
        log = logging.getLogger(name)  # exists before Lightning is imported; its filters stay
        if not any(isinstance(f, DropLightningBanners) for f in log.filters):
            log.addFilter(DropLightningBanners())
