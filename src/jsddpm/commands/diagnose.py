"""`jsddpm diagnose {run-all, utility, aggregate, report, criteria}`: real-vs-synthetic diagnostics."""

from __future__ import annotations

import argparse

from ..diagnostics.families import NAMES
from . import add_config_arguments, add_shared_options, config_from_args

FAMILIES_HELP = ", ".join(NAMES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("run-all", help="every metric family, the null, severity, classifier, report")
    p.add_argument("--real", required=True, help="real set: slice cache folder, generation folder or .npz")
    p.add_argument("--synthetic", required=True, help="synthetic set: generation folder, .npz or cache folder")
    add_shared_options(p, out=True)
    p.add_argument("--real-split", default=None, help="split of a real cache (default: diagnostics.real_split)")
    p.add_argument("--synthetic-split", default=None, help="split of a synthetic cache (default: the real split)")
    p.add_argument("--train", default=None,
                   help="the generator's training set, for memorisation (default: the real cache's train split)")
    p.add_argument("--image-channels", type=int, default=None,
                   help="image channels in an .npz (the rest is the mask); default: C=2 or 4 means a mask")
    p.add_argument("--only", nargs="+", default=None, metavar="FAMILY", help=f"run only these: {FAMILIES_HELP}")
    p.add_argument("--skip", nargs="+", default=None, metavar="FAMILY", help="skip these families")
    add_config_arguments(p)

    p = sub.add_parser("utility", help="lesion segmenters trained on real / synthetic / both, scored on "
                                       "held-out real slices")
    p.add_argument("--real", required=True,
                   help="slice cache with masks: its train split trains, its test split scores (diagnostics."
                        "utility_train_split / real_split)")
    p.add_argument("--synthetic", required=True, help="generation folder, .npz with a mask channel, or a cache")
    add_shared_options(p, out=True)
    p.add_argument("--synthetic-split", default=None,
                   help="split of a synthetic cache, e.g. val for a real reference arm (default: the real split)")
    p.add_argument("--image-channels", type=int, default=None,
                   help="image channels in an .npz (the rest is the mask); default: C=2 or 4 means a mask")
    add_config_arguments(p)

    p = sub.add_parser("aggregate", help="cross-experiment tables over several run-all folders")
    p.add_argument("dirs", nargs="+", help="diagnostics folders written by run-all")
    add_shared_options(p, out="output folder")

    p = sub.add_parser("report", help="re-render DIR/report.html from DIR/diagnostics.json")
    p.add_argument("dir", help="a diagnostics folder written by run-all")

    p = sub.add_parser("criteria", help="the proposal's success criteria: pass/fail vs a baseline (exit 0: all "
                                        "passed, 3: a criterion failed or is missing, 2: bad input)",
                       description="Exit status: 0 every criterion passed; 3 a criterion failed or its metric is "
                                   "missing; 2 an input cannot be used (one line on stderr).")
    p.add_argument("--baseline", required=True, help="diagnostics folder of the baseline model")
    p.add_argument("--candidate", required=True, help="diagnostics folder of the candidate model")
    add_shared_options(p, out="where criteria.csv/json go (default: the candidate folder)", out_default=None)


def _list_override(key: str, values) -> str:
    return f"{key}=[{','.join(values)}]"


def run(args) -> int:
    from ..diagnostics import stage as diagnose

    if args.action == "run-all":
        # `--skip a b key=value`: argparse gives the trailing overrides to the family list
        for attr in ("only", "skip"):
            values = getattr(args, attr) or []
            args.overrides = list(args.overrides) + [v for v in values if "=" in v]
            setattr(args, attr, [v for v in values if "=" not in v])
        extra = []
        if args.real_split:
            extra.append(f"diagnostics.real_split={args.real_split}")
        if args.only:
            extra.append(_list_override("diagnostics.only", args.only))
        if args.skip:
            extra.append(_list_override("diagnostics.skip", args.skip))
        args.overrides = list(args.overrides) + extra
        cfg = config_from_args(args)
        diagnose.run_all(args.real, args.synthetic, args.out, cfg, train_path=args.train,
                         image_channels=args.image_channels, synthetic_split=args.synthetic_split)
    elif args.action == "utility":
        diagnose.utility(args.real, args.synthetic, args.out, config_from_args(args),
                         synthetic_split=args.synthetic_split, image_channels=args.image_channels)
    elif args.action == "aggregate":
        out = diagnose.aggregate(args.dirs, args.out)
        print(f"diagnose aggregate: {len(args.dirs)} runs -> {out / 'cross_experiment.csv'}, {out / 'tables.md'}")
    elif args.action == "report":
        print(f"diagnose report: {diagnose.rerender_report(args.dir)}")
    elif args.action == "criteria":
        rows, text = diagnose.criteria(args.baseline, args.candidate, args.out)
        print(text)
        from ..diagnostics.criteria import CRITERIA_NOT_MET

        return 0 if all(r["passed"] is True for r in rows) else CRITERIA_NOT_MET
    return 0
