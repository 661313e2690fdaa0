"""One module per CLI stage: `add_arguments(parser)` must stay import-light; `run(args)` does the work."""


def add_config_arguments(parser) -> None:
    """The shared `--config C` and trailing `key=value` overrides."""
    parser.add_argument("--config", "-c", default=None, help="YAML config path or preset name (e.g. demo_cpu)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=3e-4")


def config_from_args(args):
    from ..config import load_config

    return load_config(args.config, args.overrides)
