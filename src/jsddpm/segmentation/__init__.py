"""The small lesion segmenter (a UNet of model/ blocks, Dice + BCE, early stopping on a subject-disjoint
validation split) and its scoring: shared by the utility and pairing diagnostics and by generation's
fidelity filter. Below the stages: imports model/, data/ and io only.

- `reference_segmenter(cache, cfg, store_dir) -> Segmenter`: ONE segmenter per (cache fingerprint,
  settings), trained on the cache's training split and stored, loaded again when it exists;
  `segmenter_store(cache_root)` is where (`<cache>/segmenters/`, else the user's cache folder).
- `Segmenter.predict(images) -> (N, H, W) bool`, `pair_dice(pred, masks) -> (N,) Dice`.
- `train_segmenter`, `SegmenterSettings`, `settings_from_config`, `split_for_validation`, and the scoring
  maths (`slice_counts`, `unit_sums`, `metrics_from_sums`, `pooled_dice`) for the utility protocol.
"""

from .network import LESION_WEIGHT, dice_bce_loss, segmentation_unet
from .reference import (
    Segmenter,
    data_digest,
    load_segmenter,
    reference_segmenter,
    save_segmenter,
    segmenter_key,
    segmenter_store,
    train_reference,
)
from .scoring import SUM_COLUMNS, metrics_from_sums, pair_dice, pooled_dice, slice_counts, unit_sums
from .training import (
    SegmenterSettings,
    crop_origins,
    one_torch_thread,
    predict_masks,
    settings_from_config,
    split_for_validation,
    still_rising,
    train_segmenter,
    validation_split,
)

__all__ = ["LESION_WEIGHT", "SUM_COLUMNS", "Segmenter", "SegmenterSettings", "crop_origins", "data_digest",
           "dice_bce_loss", "load_segmenter", "metrics_from_sums", "one_torch_thread", "pair_dice", "pooled_dice",
           "predict_masks", "reference_segmenter", "save_segmenter", "segmentation_unet", "segmenter_key",
           "segmenter_store", "settings_from_config", "slice_counts", "split_for_validation", "still_rising",
           "train_reference", "train_segmenter", "unit_sums", "validation_split"]
