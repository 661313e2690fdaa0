"""docs/metrics.md documents exactly the metrics the diagnostics produce, and is what the generator writes."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from jsddpm.cli import main
from jsddpm.diagnostics import metric_doc

ROOT = Path(__file__).resolve().parents[1]
TINY_DIAGNOSTICS = ["diagnostics.n_bootstrap=2", "diagnostics.n_null_repeats=2", "diagnostics.classifier_epochs=1",
                    "diagnostics.classifier_folds=2", "diagnostics.classifier_permutations=10",
                    "diagnostics.skip=[utility]",  # utility has no metrics of its own (tested in its file)
                    "diagnostics.utility_steps=6", "diagnostics.utility_eval_every=2"]  # pairing's segmenter


def test_docs_metrics_md_is_the_generated_reference():
    assert (ROOT / metric_doc.DOC_PATH).read_text() == metric_doc.render(), (
        "docs/metrics.md is out of date: run `python -m jsddpm.diagnostics.metric_doc docs/metrics.md`")


@pytest.mark.usefixtures("one_thread")
def test_run_all_produces_exactly_the_documented_metrics(demo_cache, tmp_path):
    """Every family on a small real cache (train split for memorisation) vs a blurred copy with masks,
    z-bins and two classes: each produced name has one entry, and each entry names a produced metric."""
    from jsddpm.data.cache import load_cache

    cache = load_cache(demo_cache)
    idx = cache.indices("test")
    x = cache.joint(idx)
    x[:, :1] = gaussian_filter(x[:, :1], sigma=(0, 0, 1.0, 1.0))
    np.savez(tmp_path / "synth.npz", images=x, zbin=cache.index["zbin"][idx], label=cache.index["label"][idx])
    out = tmp_path / "diag"
    assert main(["diagnose", "run-all", "--real", str(demo_cache), "--synthetic", str(tmp_path / "synth.npz"),
                 "--out", str(out), *TINY_DIAGNOSTICS]) == 0
    diag = json.loads((out / "diagnostics.json").read_text())
    assert all(f["status"] == "ok" for f in diag["families"].values()), diag["families"]
    produced = set(diag["metrics"])
    assert metric_doc.undocumented(produced) == []
    unused = [d.name for _, d in metric_doc.all_docs() if not any(d.regex().match(n) for n in produced)]
    assert unused == []
    for name, rec in diag["metrics"].items():  # documented under the family that produced it
        assert metric_doc.find(name) in metric_doc.METRICS[rec["family"]], name
    html = (out / "report.html").read_text()
    assert 'href="' in html and "metrics.md#spectral_slope_diff" in html  # tables link to the reference
