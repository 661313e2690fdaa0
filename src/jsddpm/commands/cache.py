"""`jsddpm cache`: NIfTI volumes (a manifest CSV) or folders of 2D images -> slice cache."""

from __future__ import annotations


def add_arguments(parser) -> None:
    from . import add_shared_options

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="CSV with columns subject_id,image,mask,group (NIfTI volumes)")
    source.add_argument("--images", help="folder of class sub-folders holding .png/.jpg/.tif images")
    add_shared_options(parser, out="output cache folder (must not exist or be empty)", config=True, overrides=True)


def run(args) -> int:
    import time
    from pathlib import Path

    from ..data.cache import summary_lines
    from . import config_from_args

    cfg = config_from_args(args)
    start = time.perf_counter()
    if args.manifest:
        from ..data.cache import build_volume_cache

        stats = build_volume_cache(Path(args.manifest), Path(args.out), cfg)
    else:
        from ..data.images import build_image_cache

        stats = build_image_cache(Path(args.images), Path(args.out), cfg)
    for line in summary_lines(stats, Path(args.out)):
        print(line)
    print(f"  built in {time.perf_counter() - start:.1f} s")
    return 0
