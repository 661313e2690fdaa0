"""`jsddpm generate --ckpt K --out DIR [--spec S.json] [--config C] [--source CACHE [--split S]]
[sample.key=value ...]`."""


def add_arguments(parser) -> None:
    from . import add_shared_options

    parser.add_argument("--ckpt", required=True, help="checkpoint written by jsddpm train (last.ckpt / best.ckpt)")
    parser.add_argument("--spec", default=None,
                        help="JSON counts per (z-bin, class); default: sample.n_per_condition for each")
    parser.add_argument("--source", default=None,
                        help="slice cache whose real slices sample.strength < 1 varies (SDEdit)")
    parser.add_argument("--split", default="train", help="split of --source to draw slices from (default train)")
    add_shared_options(parser, out=True, config="YAML whose sample section replaces the checkpoint's (optional)",
                       overwrite=True, overrides="sample.* overrides, e.g. sample.steps=25")


def run(args) -> int:
    from ..generation import generate, read_spec

    generate(args.ckpt, args.out, spec=read_spec(args.spec), config_path=args.config,
             overrides=args.overrides, overwrite=args.overwrite, source=args.source, split=args.split)
    return 0
