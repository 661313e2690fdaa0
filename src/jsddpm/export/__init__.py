"""Hand-off to the segmentation tools users train: nnU-Net v2 raw datasets and MONAI datalists of real +
synthetic pairs, with provenance and leakage checks (`cases`), above the stages and below the commands."""

from .cases import ExportPlan, plan_export
from .monai import export_monai
from .nnunet import check_nnunet_dataset, export_nnunet

__all__ = ["ExportPlan", "check_nnunet_dataset", "export_monai", "export_nnunet", "plan_export"]
