"""The metric families: ONE registry, read by the runner, the CLI's --only / --skip, the report and
docs/metrics.md.

An entry (`Family`) says
- `name`: its key (--only / --skip, the `family` of its metrics, diagnostics.json["families"],
  figures/<name>.png);
- `title`: its heading in the report, numbered as in the specification;
- `needs`: what it cannot run without: MASKS (both sets carry lesion masks), GENERATOR_TRAIN (the
  generator's training images), REAL_TRAIN (real training slices with masks, kept apart from the real
  test split); unmet needs make the runner record the family as skipped, with the reason;
- how it runs, one of
  - `module`: a pure module with `features` / `compare` [/ `detail`] (a resampled family: the runner
    computes the features once per set and re-runs `compare` for the bootstrap CI and the null);
  - `run(sets, cfg, progress) -> FamilyResult`: a trained family's whole run (classifier, utility).
    It may return metrics (with or without CI / null), figure data, a record of its own
    (diagnostics.json[name]), extra output files and example arrays for the report; a `UserError`
    it raises means "cannot run on these sets" and skips it;
- `section(view) -> Section`: its part of the report (default `metric_section`: the findings, its
  figure, a table of its numbers).

Resampled families run first, in registry order, then the trained ones (they take minutes, and a bad
input then fails before them); each resampled family's bootstrap seed follows its place in that order.

Importing this module is cheap (the CLI's help lists the names): the hooks import what they compute
and draw with.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from .report_html import Section, SectionInput
    from .sets import ImageSet, Sets

MASKS, GENERATOR_TRAIN, REAL_TRAIN = "masks", "generator_train", "real_train"
UNMET = {MASKS: "no lesion masks (image-only data)",
         GENERATOR_TRAIN: "needs the generator's training images (--train)",
         REAL_TRAIN: "needs real training slices with masks (a slice cache as --real, whose training split is "
                     "used, or --train)"}


@dataclass
class FamilyResult:
    """What a family's run returns; the runner adds the family's status and files everything."""

    metrics: dict[str, dict] = field(default_factory=dict)  # name -> {"value", "real", "synthetic", ...}
    detail: dict | None = None  # figure data: figure_data.json[name], drawn by the section
    record: dict | None = None  # a JSON record of its own: diagnostics.json[name]
    files: dict[str, str] = field(default_factory=dict)  # extra output files: file name -> text
    examples: dict[str, np.ndarray] = field(default_factory=dict)  # report arrays: sample_grid.npz "<name>_<key>"
    zbins: dict = field(default_factory=dict)  # metric -> {z-bin: value}
    status: dict = field(default_factory=dict)  # extra facts for diagnostics.json["families"][name]
    summary: str | None = None  # the progress line's tail (default "<n> metrics")


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    needs: frozenset[str] = frozenset()
    module: str | ModuleType | None = None  # resampled: the module (or its name under jsddpm.diagnostics)
    run: Callable[[Sets, object, Callable | None], FamilyResult] | None = None  # trained: the whole run
    section: Callable[[SectionInput], Section] | None = None  # None: metric_section

    @property
    def resampled(self) -> bool:
        return self.module is not None

    def load_module(self) -> ModuleType:
        if isinstance(self.module, str):
            return importlib.import_module(f"{__package__}.{self.module}")
        return self.module

    def unmet(self, sets: Sets) -> str | None:
        """Why the family cannot run on `sets` (None when it can). REAL_TRAIN counts as met when a loader
        is there: loading may still fail, and the run's UserError then says why."""
        missing = {MASKS: not sets.has_masks, GENERATOR_TRAIN: sets.train is None,
                   REAL_TRAIN: sets.load_real_train is None}
        return next((UNMET[need] for need in (MASKS, GENERATOR_TRAIN, REAL_TRAIN)
                     if need in self.needs and missing[need]), None)

    def report_section(self, view: SectionInput) -> Section:
        return (self.section or metric_section)(view)


def as_family(obj) -> Family:
    """A registry entry, or a stand-in module with NAME / features / compare (tests, benchmarks): a
    resampled family that needs nothing (build a `Family` to give one needs)."""
    return obj if isinstance(obj, Family) else Family(obj.NAME, obj.NAME, module=obj)


# --------------------------------------------------------------------------------- sections
def metric_section(view: SectionInput, sentences: list[str | None] | None = None) -> Section:
    """The findings (one sentence per severity component or explained metric), the family's figure
    from its detail, and every number in a table."""
    from . import report_figures, report_html

    figures = {}
    if view.detail:
        png = report_figures.family_figure(view.title, view.detail)
        if png:
            figures[view.name] = png
    return report_html.Section(view.title, report_html.metric_section_body(view, figures, sentences), figures)


def classifier_section(view: SectionInput) -> Section:
    from . import report_html

    return metric_section(view, [report_html.classifier_sentence(view.diag.get("metrics", {}))])


def utility_section(view: SectionInput) -> Section:
    from . import report_figures, report_html

    figures = report_figures.utility_figures(view.record, view.examples)
    return report_html.Section(view.title, report_html.utility_section_body(view.record or {}, figures), figures)


# ------------------------------------------------------------------------------ trained runs
def run_classifier(sets: Sets, cfg, progress=None) -> FamilyResult:
    """Family 10 on the joint (image + mask) arrays when both sets have masks, else on the images."""
    import numpy as np

    from . import classifier

    real, synth = sets.real, sets.synthetic

    def stack(s: ImageSet) -> np.ndarray:
        if not sets.has_masks:
            return s.images
        return np.concatenate([s.images, np.where(s.masks, 1.0, -1.0)[:, None].astype(np.float32)], axis=1)

    res = classifier.classifier_metrics(stack(real), stack(synth), cfg, real_groups=real.subject,
                                        synth_groups=synth.subject, image_channels=real.images.shape[1])
    return FamilyResult(res["metrics"], detail=res["detail"],
                        status={"features_seconds": None, "n_bootstrap": int(cfg.n_bootstrap)})


UTILITY_EXAMPLE_KEYS = ("images", "truth", "pred_real", "pred_synthetic")


def check_not_test_split(sets: Sets, dcfg) -> None:
    """Segmenters must not train on the slices they are scored on: a synthetic 'set' that is the real
    cache's test split is refused."""
    real, synth = sets.real.source, sets.synthetic.source
    if (synth.get("kind") == "cache" and _resolved(synth.get("path")) == _resolved(real.get("path"))
            and synth.get("split") in (dcfg.real_split, "all")):
        raise UserError(f"{synth.get('path')}: the synthetic set is the real test split itself; the segmenters "
                        "would train on the slices they are scored on (give --synthetic-split val, for example)")


def _resolved(path):
    from pathlib import Path

    return None if path is None else Path(path).resolve()


def run_utility(sets: Sets, cfg, progress=None) -> FamilyResult:
    """Family 13: segmenters trained on real / synthetic / both, scored on the real set (held out)."""
    import numpy as np

    from . import utility
    from .common import csv_text, json_text, jsonable

    check_not_test_split(sets, cfg)
    train = sets.real_train
    result = utility.run_utility(train, sets.synthetic, sets.real, cfg, progress=progress)
    record = jsonable({k: v for k, v in result.items() if k != "examples"})
    record.update({f"{role}_set": s.source for role, s in (("train", train), ("synthetic", sets.synthetic),
                                                          ("test", sets.real))})
    examples = {k: np.asarray(v) for k, v in result["examples"].items() if k in UTILITY_EXAMPLE_KEYS}
    files = {"utility.json": json_text(record), "utility.csv": csv_text(utility.csv_rows(result))}
    return FamilyResult(record=record, files=files, examples=examples, status={"n_metrics": len(record["arms"])},
                        summary=result["verdict"])


# ---------------------------------------------------------------------------------- registry
FAMILIES: tuple[Family, ...] = (
    Family("spectral", "1. Power spectrum", module="spectral"),
    Family("wavelet", "2. Wavelet energy", module="wavelet"),
    Family("texture", "3. Texture (GLCM, gradients)", module="texture"),
    Family("boundary", "4. Lesion boundaries", frozenset({MASKS}), module="boundary"),
    Family("background", "5. Background", module="background"),
    Family("spatial", "6. Spatial correlation", module="spatial"),
    Family("pixel", "7. Pixel-wise statistics", module="pixel"),
    Family("intensity", "8. Intensity distributions", module="intensity"),
    Family("morphology", "9. Lesion-mask morphology", frozenset({MASKS}), module="morphology"),
    Family("classifier", "10. Real-vs-synthetic classifier", run=run_classifier, section=classifier_section),
    Family("memorization", "11. Memorisation", frozenset({GENERATOR_TRAIN}), module="memorization"),
    Family("feature_distance", "12. Feature distances (KID, FD)", module="feature_distance"),
    Family("utility", "13. Utility (lesion segmenters trained on real / synthetic / both)",
           frozenset({MASKS, REAL_TRAIN}), run=run_utility, section=utility_section),
    # the last resampled family: run order (and so every earlier family's bootstrap seed) is unchanged
    Family("structure", "14. Anatomy (symmetry, outline, mid-scale texture)", module="structure"),
)
BY_NAME = {f.name: f for f in FAMILIES}
NAMES = tuple(BY_NAME)


def title(name: str) -> str:
    """The report heading of a family (its name when it is not registered)."""
    return BY_NAME[name].title if name in BY_NAME else name


def load_families(only=(), skip=()) -> list[Family]:
    """The families to run, in run order: resampled ones first, then trained ones, each in registry order.

    Unknown names in only / skip are a user error; a family whose module is not installed is left out.
    """
    for name in list(only) + list(skip):
        if name not in BY_NAME:
            raise UserError(f"--only/--skip: unknown family '{name}'; choose from {', '.join(NAMES)}")
    chosen = [f for f in FAMILIES if (not only or f.name in only) and f.name not in skip]
    out = []
    for family in sorted(chosen, key=lambda f: not f.resampled):  # stable: registry order within each kind
        if family.resampled:
            module_name = f"{__package__}.{family.module}"
            try:
                importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                continue
        out.append(family)
    return out
