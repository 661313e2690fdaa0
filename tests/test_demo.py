"""`jsddpm demo` end to end at toy size: the generated set is diagnosed without utility, the training pairs
(inpainted) with pairing + utility, the report has the pairs' section, and a rerun resumes every stage."""

from __future__ import annotations

import json
import shutil

from jsddpm.cli import main

TOY = ["data.image_size=32", "data.n_zbins=4", "model.attention_resolutions=[8]", "train.max_steps=2",
       "train.max_minutes=null", "train.cpu_threads=1", "train.progress_bar=false", "train.sample_every_n_epochs=0",
       "train.val_max_samples=8", "sample.steps=2", "sample.batch_size=64", "sample.device=cpu",
       "inpaint.steps=2", "inpaint.resample=0", "inpaint.min_fidelity=0.0", "diagnostics.n_bootstrap=2",
       "diagnostics.n_null_repeats=2",
       "diagnostics.classifier_epochs=1", "diagnostics.classifier_folds=2", "diagnostics.classifier_permutations=5",
       "diagnostics.classifier_repeats=1", "diagnostics.utility_steps=4", "diagnostics.utility_eval_every=2",
       "diagnostics.utility_seeds=1", "diagnostics.utility_workers=1", "diagnostics.utility_widths=[4,8]"]


def test_demo_diagnoses_the_generated_set_and_tests_the_training_pairs_then_resumes(demo_phantom, tmp_path, capsys,
                                                                                    one_thread):
    out = tmp_path / "demo"
    shutil.copytree(demo_phantom, out / "cohort")  # the cohort stage reuses it (building 60 subjects takes 25 s)
    assert main(["demo", "--out", str(out), "--pairs", "3", *TOY]) == 0
    generated = json.loads((out / "diagnostics" / "diagnostics.json").read_text())
    assert "utility" not in generated["families"] and "pairing" in generated["families"]
    assert not (out / "diagnostics" / "utility.json").exists()
    pairs = json.loads((out / "pairs_diagnostics" / "diagnostics.json").read_text())
    assert set(pairs["families"]) == {"pairing", "utility"}
    assert pairs["synthetic_set"]["path"] == str(out / "pairs")
    assert pairs["utility"]["arms"]["synthetic"]["n_synthetic"] == 3
    html = (out / "report.html").read_text()
    assert "Training pairs: lesions inpainted into real slices" in html and pairs["utility"]["verdict"][:40] in html
    # the preset's fidelity filter ran (at 0 here: every pair kept) and the report says so
    assert "Dice &ge; 0 (<code>inpaint.min_fidelity</code>; 3 pairs requested, keep rate 1.00" in html
    assert html == (out / "diagnostics" / "report.html").read_text()
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--pairs", "3", *TOY]) == 0  # every stage finished: all reused
    log = capsys.readouterr().out
    for stage in ("cohort: reusing", "cache: reusing", "train: finished earlier", "generate: reusing",
                  "diagnose: reusing", "inpaint: reusing"):
        assert stage in log
