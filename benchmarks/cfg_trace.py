"""Following `cfg` through the code: the files a reader opens from `pipeline.run_point` on (issue 18).

Runs one tiny `pipeline.run_point` (train 2 steps -> generate -> diagnose) under a profile hook and
records every jsddpm function that receives the config (or a section of it) or a checkpoint (which
carries the config) as an argument, and the jsddpm functions on the way to it, the first time each
runs (a reader reads a function once). The reading order is depth-first: into each such function,
then back to the caller to continue.

- a *move*: the next function read is in another file than the current one (calls and returns alike);
- a *move back up*: a return that lands in another file than the one the callee was in (the reader
  goes back to a file they had left, to continue the caller). A chain of returns is one move (the reader
  goes straight to where the next call is made), and nothing after the last call counts.
Both are also counted between packages (a sub-package such as generation/ or a top-level module is one
place): a reader who knows a package by heart moves only when the call leaves it.

Prints the counts, the moves per file, and with --path the whole sequence. Single-threaded, CPU only;
takes about a minute on an idle 2-core machine.

    PYTHONPATH=src .venv/bin/python benchmarks/cfg_trace.py [--path]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

SRC = (Path(__file__).resolve().parents[1] / "src" / "jsddpm").as_posix()

TINY = ["data.image_size=32", "data.n_zbins=4", "model.attention_resolutions=[8]", "train.max_steps=2",
        "train.max_minutes=null", "train.cpu_threads=1", "train.progress_bar=false", "train.sample_every_n_epochs=0",
        "train.val_max_samples=8", "sample.steps=2", "sample.batch_size=64", "sample.device=cpu",
        "diagnostics.n_bootstrap=2", "diagnostics.n_null_repeats=2", "diagnostics.classifier_epochs=1",
        "diagnostics.classifier_folds=2", "diagnostics.classifier_permutations=5", "diagnostics.classifier_repeats=1",
        "diagnostics.utility_steps=2", "diagnostics.utility_seeds=1", "diagnostics.utility_workers=1"]


def carries_config(value) -> bool:
    from omegaconf import DictConfig

    return (isinstance(value, DictConfig) or type(value).__name__ == "Checkpoint"
            or (isinstance(value, dict) and "jsddpm" in value and "state_dict" in value))


def trace(run) -> list[tuple[str, str, str]]:
    """(event, file, function) of the reading order: 'call' into a followed function, 'return' to its caller."""
    events: list[tuple[str, str, str]] = []
    seen: set = set()
    stack: list = []  # frames of the followed functions now running

    def hook(frame, event, arg):
        code = frame.f_code
        if event == "call" and code.co_filename.startswith(SRC) and code not in seen:
            names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
            if any(carries_config(frame.f_locals.get(n)) for n in names):
                # the jsddpm functions between the last followed one and this are on the reader's way too
                between, f = [], frame
                while f is not None and (not stack or f is not stack[-1]):
                    if f.f_code.co_filename.startswith(SRC):
                        between.append(f)
                    f = f.f_back
                for f in reversed(between):
                    stack.append(f)
                    if f.f_code not in seen:
                        seen.add(f.f_code)
                        events.append(("call", f.f_code.co_filename[len(SRC) + 1:], f.f_code.co_name))
        elif event == "return" and stack and frame is stack[-1]:
            stack.pop()
            if stack:
                events.append(("return", stack[-1].f_code.co_filename[len(SRC) + 1:], stack[-1].f_code.co_name))

    sys.setprofile(hook)
    try:
        run()
    finally:
        sys.setprofile(None)
    return events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", action="store_true", help="print the whole reading order")
    args = ap.parse_args()

    import torch

    from jsddpm.config import load_config
    from jsddpm.pipeline import ensure_cache, ensure_cohort, run_point

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = load_config("demo_cpu", TINY)
        manifest = ensure_cohort(work / "cohort", 8, 4, 0, log=lambda m: None)
        cache = ensure_cache(manifest, work / "cache", cfg, log=lambda m: None)
        events = trace(lambda: run_point(cfg, cache, work / "point", log=lambda m: None))
    # a reader goes back only to where the next call is made: a chain of returns is one move, and the
    # returns after the last call are none
    while events and events[-1][0] == "return":
        events.pop()
    events = [e for e, nxt in zip(events, events[1:] + [("call", "", "")]) if e[0] == "call" or nxt[0] == "call"]
    files = [f for _, f, _ in events]
    stages = []  # the pipeline stage each event belongs to (train_stage, generate_stage, diagnose_stage)
    for kind, f, name in events:
        stages.append(name if kind == "call" and f == "pipeline.py" and name != "run_point"
                      else stages[-1] if stages else "run_point")
    def moves(place) -> list[tuple[str, str]]:
        """(kind, stage) of each move between places (`place` maps a file to a file or to its package)."""
        return [(kind, stage) for (_, a, _), (kind, b, _), stage in zip(events, events[1:], stages[1:])
                if place(a) != place(b)]

    by_file = moves(lambda f: f)
    by_package = moves(lambda f: f.split("/")[0])  # training/, generation/, diagnostics/ ... one place each
    per_file = collections.Counter(b for (_, a, _), (_, b, _) in zip(events, events[1:]) if a != b)
    print(f"followed functions: {sum(e[0] == 'call' for e in events)} in {len(set(files))} files")
    print(f"{'part':<16} {'file moves':>10} {'back up':>8} {'package moves':>14} {'back up':>8}")
    for stage in [*dict.fromkeys(stages), "all"]:
        counts = []
        for found in (by_file, by_package):
            mine = [kind for kind, where in found if stage in ("all", where)]
            counts += [len(mine), mine.count("return")]
        print(f"{stage:<16} {counts[0]:>10} {counts[1]:>8} {counts[2]:>14} {counts[3]:>8}")
    print("arrivals per file: " + ", ".join(f"{f} {n}" for f, n in per_file.most_common()))
    if args.path:
        for kind, f, name in events:
            print(f"  {'->' if kind == 'call' else '<-'} {f}:{name}")


if __name__ == "__main__":
    main()
