"""One module per CLI stage: `add_arguments(parser)` must stay import-light; `run(args)` does the work."""


# the demo cohort: `jsddpm phantom`, `jsddpm demo` and a `jsddpm study` without a cache all build this one
DEMO_SUBJECTS, DEMO_PATIENTS, DEMO_SEED = 60, 30, 0


def add_cohort_arguments(parser) -> None:
    """`--subjects`, `--patients`, `--seed` of the demo cohort (phantom and demo)."""
    parser.add_argument("--subjects", type=int, default=DEMO_SUBJECTS,
                        help=f"number of subjects in all (default {DEMO_SUBJECTS})")
    parser.add_argument("--patients", type=int, default=DEMO_PATIENTS,
                        help=f"how many of the subjects are patients with lesions (default {DEMO_PATIENTS})")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="cohort seed (same seed, same cohort)")


NEW_FOLDER = "output folder (must not exist or be empty)"
REQUIRED = object()  # `out_default` of an --out the user must give


def add_shared_options(parser, *, out: str | bool = False, out_default=REQUIRED,
                       config: str | bool = False, config_default: str | None = None,
                       overwrite: bool = False, overrides: str | bool = False) -> None:
    """The options several commands take, defined once: `--out`, `--config/-c`, `--overwrite` and the
    trailing `key=value` overrides. Each is added when asked for: True for the usual help, or a command's
    own help text; an `out_default` (None included) makes --out optional."""
    if out:
        parser.add_argument("--out", required=out_default is REQUIRED,
                            default=None if out_default is REQUIRED else out_default,
                            help=NEW_FOLDER if out is True else out)
    if config:
        parser.add_argument("--config", "-c", default=config_default,
                            help="YAML config path or preset name (e.g. demo_cpu)" if config is True else config)
    if overwrite:
        parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    if overrides:
        parser.add_argument("overrides", nargs="*", metavar="key=value",
                            help="config overrides, e.g. train.lr=3e-4" if overrides is True else overrides)


def add_config_arguments(parser) -> None:
    """The shared `--config C` and trailing `key=value` overrides."""
    add_shared_options(parser, config=True, overrides=True)


def config_from_args(args):
    from ..config import load_config

    return load_config(args.config, args.overrides)
