"""`jsddpm generate --ckpt K --out DIR [--spec S.json] [--config C] [--source CACHE [--split S]]
[--masks bank|generated|PATH [--mask-zbins Z] [--cache CACHE]] [sample.key=value ...]`."""


def add_arguments(parser) -> None:
    from . import add_shared_options

    parser.add_argument("--ckpt", required=True, help="checkpoint written by jsddpm train (last.ckpt / best.ckpt)")
    parser.add_argument("--spec", default=None,
                        help="JSON counts per (z-bin, class); default: sample.n_per_condition for each")
    parser.add_argument("--source", default=None,
                        help="slice cache whose real slices sample.strength < 1 varies (SDEdit)")
    parser.add_argument("--split", default="train", help="split of --source to draw slices from (default train)")
    parser.add_argument("--masks", default=None, metavar="bank|generated|PATH",
                        help="draw each image given a mask (a model trained with model.mask_conditioning): bank = "
                             "lesion masks of the training split, generated = drawn by the model first, PATH = your "
                             "masks (.npy (N, H, W) or a folder of PNGs); default: image and mask drawn jointly")
    parser.add_argument("--mask-zbins", default=None, metavar="Z[,Z...]",
                        help="z-bin of each mask of --masks PATH (or one for all); default: a CSV beside the masks, "
                             "else the z-bin whose brain prior covers each mask best")
    parser.add_argument("--cache", default=None,
                        help="the checkpoint's training cache, read by --masks bank and the fidelity filter "
                             "(default: the checkpoint's data.cache_dir; checked by fingerprint)")
    add_shared_options(parser, out=True, config="YAML whose sample section replaces the checkpoint's (optional)",
                       overwrite=True, overrides="sample.* overrides, e.g. sample.steps=25")


def run(args) -> int:
    from ..generation import generate, read_spec

    generate(args.ckpt, args.out, spec=read_spec(args.spec), config=args.config,
             overrides=args.overrides, overwrite=args.overwrite, source=args.source, split=args.split,
             masks=args.masks, cache=args.cache, mask_zbins=args.mask_zbins)
    return 0
