"""`jsddpm demo`: the main job on the embedded demo cohort, end to end, resumable."""

from __future__ import annotations

from . import add_cohort_arguments, add_shared_options


def add_arguments(parser) -> None:
    add_shared_options(parser, out="output folder (default demo_out); rerun to resume", out_default="demo_out")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training budget in minutes (default: the preset's train.max_minutes, 6)")
    add_cohort_arguments(parser)
    add_shared_options(parser, config="config path or preset (default demo_cpu)", config_default="demo_cpu",
                       overrides="config overrides")


def run(args) -> int:
    import time
    from pathlib import Path

    from ..config import load_config
    from ..errors import UserError
    from ..io import atomic_write_bytes
    from ..pipeline import (
        ensure_cache,
        ensure_cohort,
        inpaint_stage,
        inpainted_report,
        run_point,
        timed_logger,
        trained_checkpoint,
    )

    overrides = list(args.overrides)
    if args.minutes is not None:
        if args.minutes <= 0:
            raise UserError(f"--minutes {args.minutes}: give a positive training budget")
        overrides.append(f"train.max_minutes={args.minutes}")
    cfg = load_config(args.config, overrides)
    out = Path(args.out)
    t0 = time.perf_counter()
    log = timed_logger()
    log(f"demo: {args.config} -> {out} (training budget {cfg.train.max_minutes} min)")
    manifest = ensure_cohort(out / "cohort", args.subjects, args.patients, args.seed, log)
    cache = ensure_cache(manifest, out / "cache", cfg, log)
    diag = run_point(cfg, cache, out, log)
    inpainted = inpaint_stage(trained_checkpoint(out / "train"), cache, out / "inpainted", log=log)
    report = out / "report.html"
    atomic_write_bytes(report, inpainted_report(diag, inpainted, log).read_bytes())  # self-contained
    log(f"demo: done in {(time.perf_counter() - t0) / 60:.1f} min. Open {report}")
    return 0
