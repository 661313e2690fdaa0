"""Real-vs-synthetic diagnostics: one module per metric family, pure functions on arrays.

- `runner.run_diagnostics(real, synth, cfg.diagnostics, train=None)`: every family, bootstrap CIs,
  the real-vs-real null, per-z-bin tables, severity (`runner.ImageSet` holds one side).
- `severity`: null-calibrated absolute severity and cross-experiment relative severity.
- `classifier`: family 10, the k-fold real-vs-synthetic CNN (plain and dithered AUC).
- `aggregate`, `criteria`, `report`: cross-experiment tables, the proposal's pass/fail criteria, the
  HTML report. Reading and writing files is `jsddpm.diagnose`'s job.
"""
