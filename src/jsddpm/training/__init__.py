"""Lightning training: the module, EMA, optimiser, callbacks and the trainer factory.

`from jsddpm.training.trainer import train` runs the `jsddpm train` stage; the submodules import
Lightning, so this package imports nothing eagerly.
"""
