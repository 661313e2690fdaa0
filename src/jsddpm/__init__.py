"""jsddpm: joint image + lesion-mask diffusion on small medical imaging datasets, and diagnostics
of how synthetic images differ from real ones."""

__version__ = "0.1.0"
