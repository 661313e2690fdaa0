"""`jsddpm export {nnunet, monai}`: real + synthetic pairs as a training set for nnU-Net v2 or MONAI."""

from __future__ import annotations

import argparse


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real", required=True, help="the slice cache the synthetic sets' model was trained on")
    p.add_argument("--synthetic", nargs="+", default=[], metavar="GEN",
                   help="generation or inpaint folders (samples.npz) whose pairs join the training cases")
    p.add_argument("--real-fraction", type=float, default=1.0,
                   help="train on this fraction of the cache's training subjects (stratified by group; default 1)")
    p.add_argument("--min-fidelity", type=float, default=None,
                   help="keep only synthetic pairs scored at least this (samples.npz 'fidelity'; unscored pairs drop)")
    p.add_argument("--format", default="auto", choices=("auto", "nifti", "png"),
                   help="files: NIfTI (float32, the cache's spacing; default for volume caches) or 8-bit PNG "
                        "(nnU-Net's NaturalImage2DIO; default for image-folder caches)")
    p.add_argument("--folds", type=int, default=5, help="validation folds over the real training subjects (default 5)")
    p.add_argument("--include-val", action="store_true",
                   help="train on the cache's val split subjects too (default: its train split only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subject fraction and the folds")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TOOL", required=True)
    p = sub.add_parser("nnunet", help="an nnU-Net v2 raw dataset: OUT/DatasetNNN_NAME with imagesTr, labelsTr, "
                                      "imagesTs, labelsTs, dataset.json, splits_final.json, cases.csv")
    p.add_argument("--out", required=True, help="the nnUNet_raw folder (DatasetNNN_NAME is written into it)")
    p.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset id, 1..999 (custom: 500 and up)")
    p.add_argument("--name", required=True, help="dataset name: letters, digits, '-' and '_'")
    p.add_argument("--modality", default="MRI",
                   help="dataset.json channel name of a one-channel cache (default MRI: nnU-Net z-scores it)")
    add_common(p)
    p = sub.add_parser("monai", help="images + labels + a MONAI datalist.json (training / validation / test)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--fold", type=int, default=0, help="which fold is the validation list (default 0)")
    add_common(p)


def run(args) -> int:
    common = dict(synthetic=args.synthetic, real_fraction=args.real_fraction, min_fidelity=args.min_fidelity,
                  fmt=args.format, folds=args.folds, seed=args.seed, include_val=args.include_val,
                  overwrite=args.overwrite)
    if args.target == "nnunet":
        from ..export import export_nnunet

        export_nnunet(args.real, args.out, args.dataset_id, args.name, modality=args.modality, **common)
    else:
        from ..export import export_monai

        export_monai(args.real, args.out, fold=args.fold, **common)
    return 0
