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
  - `run(sets, cfg, progress) -> FamilyResult`: a trained family's whole run (classifier, utility,
    pairing). It may return metrics (with or without CI / null), per-sample features for the runner to
    resample like a resampled family's (`Resample`: pairing's per-pair scores), figure data, a record of
    its own (diagnostics.json[name]), extra output files and example arrays for the report; a
    `UserError` it raises means "cannot run on these sets" and skips it;
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

    from .common import Features
    from .report_html import Section, SectionInput
    from .sets import ImageSet, Sets

MASKS, GENERATOR_TRAIN, REAL_TRAIN = "masks", "generator_train", "real_train"
UNMET = {MASKS: "no lesion masks (image-only data)",
         GENERATOR_TRAIN: "needs the generator's training images (--train)",
         REAL_TRAIN: "needs real training slices with masks (a slice cache as --real, whose training split is "
                     "used, or --train)"}


@dataclass
class Resample:
    """Per-sample features a trained family computed (pairing: per-pair scores from its segmenter's
    predictions), for the runner to compare like a resampled family's: `module.compare` for the value,
    bootstrap CIs and the real-vs-real null, resampling the units of `real_set` / `synthetic_set` (the
    sets the features' rows come from, in order: subjects or slices, runner.resampling_unit)."""

    module: ModuleType  # with compare(real, synth, cfg) -> {name: metric}
    real: Features
    synthetic: Features
    real_set: ImageSet
    synthetic_set: ImageSet


@dataclass
class FamilyResult:
    """What a family's run returns; the runner adds the family's status and files everything."""

    metrics: dict[str, dict] = field(default_factory=dict)  # name -> {"value", "real", "synthetic", ...}
    resample: Resample | None = None  # features whose compare the runner resamples (metrics added to `metrics`)
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
    try:  # the pairing family's reference segmenter is the real arm's first seed: trained once for both
        reference = sets.reference_segmenter(cfg, progress)
    except UserError:
        reference = None  # utility says why itself
    result = utility.run_utility(train, sets.synthetic, sets.real, cfg, progress=progress, reference=reference)
    record = jsonable({k: v for k, v in result.items() if k != "examples"})
    record.update({f"{role}_set": s.source for role, s in (("train", train), ("synthetic", sets.synthetic),
                                                          ("test", sets.real))})
    examples = {k: np.asarray(v) for k, v in result["examples"].items() if k in UTILITY_EXAMPLE_KEYS}
    files = {"utility.json": json_text(record), "utility.csv": csv_text(utility.csv_rows(result))}
    return FamilyResult(record=record, files=files, examples=examples, status={"n_metrics": len(record["arms"])},
                        summary=result["verdict"])


def pairing_section(view: SectionInput) -> Section:
    from . import report_figures, report_html

    figures = report_figures.pairing_figures(view.detail or {}, view.examples)
    return report_html.Section(view.title, report_html.pairing_section_body(view, figures), figures)


def run_pairing(sets: Sets, cfg, progress=None) -> FamilyResult:
    """Family 14: the reference segmenter's agreement with each synthetic mask (fidelity) against its
    agreement with held-out real masks, and the lesion contrast under the masks (pairing.py)."""
    import numpy as np

    from . import pairing
    from .common import csv_text

    real, synth = sets.real, sets.synthetic
    if not real.masks.any():
        raise UserError(f"{real.source.get('path', 'real set')}: no lesions in the real slices; pairing needs "
                        "held-out real lesions for its ceiling (choose another --real-split)")
    segmenter = sets.reference_segmenter(cfg, progress)
    ev_real = pairing.evaluate(real.images, real.masks, segmenter.predict, cfg)
    ev_synth = pairing.evaluate(synth.images, synth.masks, segmenter.predict, cfg, synth.zbin, synth.label)
    info = segmenter.info
    record = {"segmenter": {k: info.get(k) for k in ("path", "key", "source", "cache_fingerprint", "split", "seed",
                                                      "settings", "n_fit", "n_val", "seconds")},
              "n_pairs": {"real": len(ev_real["lesion"]), "synthetic": len(ev_synth["lesion"])}}
    record["segmenter"]["training"] = {k: (info.get("training") or {}).get(k)
                                       for k in ("steps", "best_step", "val_dice", "converged")}
    res = FamilyResult(record=record, files={"pairing.csv": csv_text(ev_synth["rows"])},
                       detail=pairing.detail(ev_real, ev_synth),
                       examples=pairing.worst_pairs(synth.images, synth.masks, ev_synth),
                       status={"n_pairs": record["n_pairs"], "segmenter": info.get("source")})
    if len(ev_synth["lesion"]):
        res.resample = Resample(pairing, ev_real["features"], ev_synth["features"], real.take(ev_real["lesion"]),
                                synth.take(ev_synth["lesion"]))
    else:  # no lesion pair: the synthetic side is absent (severity: a maximal deviation)
        res.metrics = pairing.absent_metrics(ev_real["features"])
    d = np.mean(ev_synth["fidelity"][ev_synth["lesion"]]) if len(ev_synth["lesion"]) else float("nan")
    res.summary = (f"{len(ev_synth['lesion'])} synthetic lesion pairs, fidelity {d:.3f} "
                   f"(real {np.mean(ev_real['fidelity'][ev_real['lesion']]):.3f}); segmenter {info.get('source')}")
    return res


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
    Family("pairing", "14. Pairing (does the image agree with its mask)", frozenset({MASKS, REAL_TRAIN}),
           run=run_pairing, section=pairing_section),
    # the last resampled family: run order (and so every earlier family's bootstrap seed) is unchanged
    Family("structure", "15. Anatomy (symmetry, outline, mid-scale texture)", module="structure"),
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
