"""`jsddpm train --config C [key=value ...]`: train on the slice cache in data.cache_dir."""

from . import add_config_arguments, config_from_args


def add_arguments(parser) -> None:
    add_config_arguments(parser)


def run(args) -> int:
    from ..training.trainer import train

    train(config_from_args(args))
    return 0
