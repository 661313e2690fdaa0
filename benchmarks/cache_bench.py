"""Speed and memory of building the demo cohort's slice cache.

    .venv/bin/python benchmarks/cache_bench.py [--subjects 40 --patients 20] [--phantom DIR] [key=value ...]

Writes the phantom cohort to a temporary folder (unless --phantom names an existing one), then times
`build_volume_cache` and prints volumes/s, slices/s and peak memory (Python-traced allocations during
caching, and the process's peak resident set).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phantom", default="", help="existing phantom folder (skips building one)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    from jsddpm.config import load_config
    from jsddpm.data.cache import build_volume_cache
    from jsddpm.data.phantom import write_cohort

    cfg = load_config(None, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        phantom = Path(args.phantom) if args.phantom else Path(tmp) / "phantom"
        if not args.phantom:
            phantom.mkdir()
            start = time.perf_counter()
            write_cohort(phantom, args.subjects, args.patients, args.seed)
            print(f"phantom: {args.subjects + args.patients} volumes in {time.perf_counter() - start:.1f} s")
        n_volumes = sum(1 for _ in open(phantom / "manifest.csv")) - 1
        tracemalloc.start()
        start = time.perf_counter()
        stats = build_volume_cache(phantom / "manifest.csv", Path(tmp) / "cache", cfg)
        seconds = time.perf_counter() - start
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"cache: {n_volumes} volumes -> {stats['n_slices']} slices at {cfg.data.image_size} px in {seconds:.2f} s")
    print(f"  {n_volumes / seconds:.1f} volumes/s, {stats['n_slices'] / seconds:.0f} slices/s")
    print(f"  peak traced memory while caching {traced_peak / 2**20:.0f} MiB; peak RSS {rss_mib:.0f} MiB")


if __name__ == "__main__":
    main()
