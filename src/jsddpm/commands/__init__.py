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


def add_config_arguments(parser) -> None:
    """The shared `--config C` and trailing `key=value` overrides."""
    parser.add_argument("--config", "-c", default=None, help="YAML config path or preset name (e.g. demo_cpu)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=3e-4")


def config_from_args(args):
    from ..config import load_config

    return load_config(args.config, args.overrides)
