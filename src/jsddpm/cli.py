"""The `jsddpm` command: parse, load config, call a stage. Stages live in `jsddpm.commands.<name>`,
each with `add_arguments(parser)` (cheap) and `run(args)` (imports heavy modules itself), so
`jsddpm --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import describe_failure, terminate_as_interrupt

# name -> one-line help; the module jsddpm.commands.<name> implements it
COMMANDS = {
    "phantom": "write the demo cohort: NIfTI volumes + lesion masks + manifest from the MNI152 template",
    "cache": "volumes (manifest CSV) or image folders -> slice cache",
    "train": "train a diffusion model on a slice cache (Lightning; resumable)",
    "generate": "checkpoint -> synthetic set (samples.npz, PNG grids)",
    "inpaint": "checkpoint + real lesion-free slices -> the same slices with a new lesion and its exact mask",
    "diagnose": "real vs synthetic diagnostics: run-all, aggregate, report, criteria",
    "demo": "the main job: demo cohort -> cache -> train -> generate -> diagnose -> report.html",
    "study": "train -> generate -> diagnose over a grid of config values, then aggregate",
    "export": "real + synthetic pairs -> an nnU-Net v2 raw dataset or a MONAI datalist (leak-free splits)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jsddpm",
        description="Joint image + lesion-mask diffusion for small medical imaging datasets, "
        "and diagnostics of how synthetic images differ from real ones.",
    )
    parser.add_argument("--version", action="version", version=f"jsddpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"jsddpm.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    from . import quiet

    quiet.install()  # third-party banners and deprecations a user cannot act on; ours stay
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        with terminate_as_interrupt():
            result = args._module.run(args)
    except BaseException as exc:  # expected failures -> one line (errors.describe_failure); bugs -> traceback
        failure = describe_failure(exc)
        if failure is None:
            raise
        code, line = failure
        print(f"jsddpm {args.command}: {line}", file=sys.stderr)
        return code
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
