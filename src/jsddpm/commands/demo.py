"""`jsddpm demo`: the main job on the embedded demo cohort, end to end, resumable."""

from __future__ import annotations

from . import add_cohort_arguments, add_shared_options

# The demo's training pairs are lesions inpainted into real lesion-free slices: of the sources compared
# on the demo (README, "Which synthetic pairs train a segmenter"), the only one whose pairs alone teach a
# segmenter something (200 pairs: Dice 0.21 vs 0.06 for the fully generated set, real 0.59), and more
# when only the pairs whose lesion the reference segmenter finds are kept (the preset's inpaint.min_fidelity:
# 64 pairs 0.45). 64 keep the demo within 10 minutes (their filtered inpainting ~40 s, utility ~2 min)
DEMO_PAIRS = 64


def add_arguments(parser) -> None:
    add_shared_options(parser, out="output folder (default demo_out); rerun to resume", out_default="demo_out")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training budget in minutes (default: the preset's train.max_minutes)")
    parser.add_argument("--pairs", type=int, default=DEMO_PAIRS,
                        help=f"training pairs to make by inpainting and test with a segmenter (default {DEMO_PAIRS})")
    add_cohort_arguments(parser)
    add_shared_options(parser, config="config path or preset (default demo_cpu)", config_default="demo_cpu",
                       overrides="config overrides")


def run(args) -> int:
    import time
    from pathlib import Path

    from omegaconf import OmegaConf

    from ..config import load_config
    from ..errors import UserError
    from ..io import atomic_write_bytes
    from ..pipeline import (
        diagnose_stage,
        ensure_cache,
        ensure_cohort,
        inpaint_stage,
        pairs_report,
        run_point,
        timed_logger,
        trained_checkpoint,
    )

    overrides = list(args.overrides)
    if args.minutes is not None:
        if args.minutes <= 0:
            raise UserError(f"--minutes {args.minutes}: give a positive training budget")
        overrides.append(f"train.max_minutes={args.minutes}")
    if args.pairs < 1:
        raise UserError(f"--pairs {args.pairs}: give at least 1 training pair")
    cfg = load_config(args.config, overrides)
    out = Path(args.out)
    t0 = time.perf_counter()
    log = timed_logger()
    log(f"demo: {args.config} -> {out} (training budget {cfg.train.max_minutes} min)")
    manifest = ensure_cohort(out / "cohort", args.subjects, args.patients, args.seed, log)
    cache = ensure_cache(manifest, out / "cache", cfg, log)
    # two sets, two questions: the fully generated set answers how synthetic images differ from real ones
    # (every family but utility), the training pairs whether they help a segmenter (pairing + utility)
    generated_cfg = OmegaConf.merge(cfg, {"diagnostics": {"skip": sorted({*cfg.diagnostics.skip, "utility"})}})
    diag = run_point(generated_cfg, cache, out, log)
    pairs = inpaint_stage(trained_checkpoint(out / "train"), cache, out / "pairs", n=args.pairs, log=log)
    pairs_cfg = OmegaConf.merge(cfg, {"diagnostics": {"only": ["pairing", "utility"], "skip": []}})
    pairs_diag = diagnose_stage(pairs_cfg, cache, pairs, out / "pairs_diagnostics", log)
    report = out / "report.html"
    atomic_write_bytes(report, pairs_report(diag, pairs, pairs_diag, log).read_bytes())  # self-contained
    log(f"demo: done in {(time.perf_counter() - t0) / 60:.1f} min. Open {report}")
    return 0
