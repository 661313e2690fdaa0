"""`jsddpm inpaint --ckpt K --source CACHE --out DIR [--split train] [--masks bank|generated] [--n N]
[--config C] [sample.key=value | inpaint.key=value ...]`."""


def add_arguments(parser) -> None:
    from ..config import MASK_SOURCES
    from . import add_shared_options

    parser.add_argument("--ckpt", required=True, help="checkpoint of a joint image + mask model (jsddpm train)")
    parser.add_argument("--source", required=True, help="slice cache whose lesion-free slices receive the lesions")
    parser.add_argument("--split", default="train", help="split of --source the lesion-free slices come from")
    parser.add_argument("--masks", default="bank", choices=MASK_SOURCES,
                        help="target masks: real lesion masks of other training subjects (bank) or drawn by the "
                             "model (generated)")
    parser.add_argument("--n", type=int, default=32,
                        help="number of results (sources are cycled; default 32; at most what fits in memory)")
    add_shared_options(parser, out=True,
                       config="YAML whose sample and inpaint sections replace the checkpoint's (optional)",
                       overwrite=True, overrides="sample.* / inpaint.* overrides, e.g. inpaint.resample=4")


def run(args) -> int:
    from ..generation.inpaint import inpaint

    inpaint(args.ckpt, args.source, args.out, split=args.split, masks=args.masks, n=args.n,
            config=args.config, overrides=args.overrides, overwrite=args.overwrite)
    return 0
