"""`jsddpm study --config BASE --grid key=v1,v2 ... --out DIR`: a resumable grid of experiments."""

from __future__ import annotations


def add_arguments(parser) -> None:
    from ..study import DEFAULT_GRID
    from . import add_shared_options

    parser.add_argument("--grid", nargs="+", default=list(DEFAULT_GRID), metavar="key=v1,v2",
                        help=f"grid axes (default: {' '.join(DEFAULT_GRID)})")
    parser.add_argument("--cache", default=None,
                        help="slice cache to train on (default: data.cache_dir, else the demo cohort built in DIR)")
    add_shared_options(parser, out="study folder; rerun the same command to resume",
                       config="base config path or preset (default demo_cpu)", config_default="demo_cpu",
                       overrides="overrides applied to every point")


def run(args) -> int:
    from pathlib import Path

    from ..config import load_config
    from ..io import output_lock
    from ..pipeline import ensure_cache, ensure_cohort, run_point, timed_logger
    from ..study import finish_study, grid_points, parse_grid, run_study
    from . import DEMO_PATIENTS, DEMO_SEED, DEMO_SUBJECTS

    grid = parse_grid(args.grid)
    base = load_config(args.config, args.overrides)
    for point in grid_points(grid):  # a bad key or value fails now, not after hours of training
        load_config(args.config, list(args.overrides) + [f"{k}={v}" for k, v in point.items()])
    out = Path(args.out)
    log = timed_logger()
    with output_lock(out):  # the whole study, the demo cohort and cache it may build included
        cache = args.cache or base.data.cache_dir
        if not cache:
            cohort = ensure_cohort(out / "cohort", DEMO_SUBJECTS, DEMO_PATIENTS, DEMO_SEED, log)
            cache = ensure_cache(cohort, out / "cache", base, log)

        def one_point(overrides, point_dir):
            return run_point(load_config(args.config, overrides), Path(cache), point_dir, log)

        diag_dirs = run_study(list(args.overrides), grid, out, one_point, base_config=args.config, log=log)
        finish_study(diag_dirs, out, log)
    return 0
