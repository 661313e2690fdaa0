"""`jsddpm phantom`: write the demo cohort (NIfTI volumes, lesion masks, manifest.csv)."""

from __future__ import annotations

from . import add_cohort_arguments, add_shared_options


def add_arguments(parser) -> None:
    add_shared_options(parser, out=True)
    add_cohort_arguments(parser)


def run(args) -> int:
    import time

    from ..data.phantom import write_cohort
    from ..errors import UserError
    from ..io import atomic_dir, write_run_record

    if args.subjects < 1 or not 0 <= args.patients <= args.subjects:
        raise UserError(f"{args.out}: need --subjects >= 1 and 0 <= --patients <= --subjects "
                        f"(got {args.subjects} and {args.patients})")
    n_controls = args.subjects - args.patients
    start = time.perf_counter()
    with atomic_dir(args.out) as tmp:
        write_cohort(tmp, n_controls, args.patients, args.seed)
        write_run_record(tmp)
    print(f"phantom: {n_controls} controls + {args.patients} patients (seed {args.seed}) -> "
          f"{args.out}/manifest.csv in {time.perf_counter() - start:.1f} s")
    return 0
