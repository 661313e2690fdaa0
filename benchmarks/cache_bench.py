"""Speed and memory of building the demo cohort's slice cache; or, with --load-gb, how long loading a
large cache takes the first time (every value checked) and the next times (the validation stamp).

    .venv/bin/python benchmarks/cache_bench.py [--subjects 40 --patients 20] [--phantom DIR] [key=value ...]
    .venv/bin/python benchmarks/cache_bench.py --load-gb 3 [--size 160] [--dir DIR]

Build: writes the phantom cohort to a temporary folder (unless --phantom names an existing one), then times
`build_volume_cache` and prints volumes/s, slices/s and peak memory (Python-traced allocations during
caching, and the process's peak resident set).

Load: writes a synthetic cache of about that many GB (float32 images + uint8 masks at --size px, in
chunks) into a temporary folder under --dir, waits out the stamp's settle time (a cache is never loaded
within 2 s of being written in use), then times `load_cache` four times: the first checks every value and
writes the stamp, the later ones check the stamp. The page cache is warm for every load (the first load's
time is the checking, not the disk).
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
    parser.add_argument("--load-gb", type=float, default=0.0, help="time loading a synthetic cache of this size")
    parser.add_argument("--size", type=int, default=160, help="--load-gb: image size in pixels")
    parser.add_argument("--dir", default=None, help="--load-gb: where to write the cache (default: the temp dir)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    if args.load_gb > 0:
        load_bench(args.load_gb, args.size, args.dir)
        return

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


def write_large_cache(root: Path, gigabytes: float, size: int, n_zbins: int = 30, per_subject: int = 100) -> int:
    """A valid slice cache of about `gigabytes` (images float32 + masks uint8), its arrays written in
    chunks so that memory stays small. Returns the number of slices."""
    import numpy as np

    from jsddpm.data.cache import cache_stats, write_cache

    n = max(per_subject, int(gigabytes * 2**30 / (size * size * 5)))
    subject = np.arange(n) // per_subject
    z = np.arange(n) % per_subject
    z_norm = (z / (per_subject - 1)).astype(np.float32)
    index = {"subject_id": np.array([f"sub-{s:05d}" for s in subject]),
             "group": np.where(subject % 2, "patient", "control"), "label": (subject % 2).astype(np.int64),
             "split": np.where(subject % 10 < 7, "train", "test"), "fold": (subject % 5).astype(np.int64),
             "z": z.astype(np.int64), "z_norm": z_norm,
             "zbin": np.minimum(np.floor(z_norm * n_zbins), n_zbins - 1).astype(np.int64),
             "has_lesion": np.ones(n, np.int64), "lesion_area": np.ones(n, np.int64)}
    stats = cache_stats(index, ["no_lesion", "lesion"], n_zbins,
                        {"source": "synthetic", "channels": 1, "image_size": size, "joint": True})
    root.mkdir(parents=True)
    placeholder = np.zeros((1, 1, 1, 1))  # the small files come from write_cache, the arrays are written below
    write_cache(root, None, placeholder, placeholder, index, np.full((n_zbins, size, size), 0.5, np.float32), stats)
    images = np.lib.format.open_memmap(root / "images.npy", "w+", np.float32, (n, 1, size, size))
    masks = np.lib.format.open_memmap(root / "masks.npy", "w+", np.uint8, (n, 1, size, size))
    rng = np.random.default_rng(0)
    for start in range(0, n, 2048):
        k = min(2048, n - start)
        images[start:start + k] = rng.uniform(-1, 1, (k, 1, size, size)).astype(np.float32)
        masks[start:start + k] = rng.random((k, 1, size, size)) < 0.01
    images.flush()
    masks.flush()
    return n


def load_bench(gigabytes: float, size: int, where: str | None) -> None:
    from jsddpm.data.cache import STAMP_SETTLE_NS, load_cache

    with tempfile.TemporaryDirectory(dir=where) as tmp:
        root = Path(tmp) / "cache"
        start = time.perf_counter()
        n = write_large_cache(root, gigabytes, size)
        nbytes = sum(f.stat().st_size for f in root.iterdir())
        print(f"cache: {n} slices at {size} px, {nbytes / 2**30:.2f} GiB on disk, written in "
              f"{time.perf_counter() - start:.0f} s")
        time.sleep(STAMP_SETTLE_NS / 1e9)
        print("load  seconds  what")
        for k in range(4):
            start = time.perf_counter()
            load_cache(root)
            seconds = time.perf_counter() - start
            print(f"{k + 1:>4}  {seconds:7.3f}  {'every value checked, stamp written' if k == 0 else 'stamp checked'}")


if __name__ == "__main__":
    main()
