"""Real-vs-synthetic diagnostics, the wing of the pipeline after generation. Read in this order:

    sets.py        ImageSet (one side of a comparison) and reading sets: cache split, generation folder, .npz
    families.py    the ONE registry of families: name, report title, needs, how it runs, its report section
    runner.py      runs the selected families: features once, bootstrap CIs, real-vs-real null, severity
    report.py      the HTML report assembled from the families' sections (report_figures.py: the drawing,
                   report_html.py: the HTML building blocks)
    stage.py       the stages' file I/O: run-all, utility, report re-rendering, aggregate, criteria
    metric_doc.py  the metric reference; generates docs/metrics.md

Family modules are pure arrays -> dicts (spectral, wavelet, texture, boundary, background, spatial,
pixel, intensity, morphology, memorization, feature_distance: features / compare; classifier, utility
and pairing: trained networks); `common` holds their shared containers and helpers, `regions` the brain /
background / lesion definitions, `severity` the null-calibrated severity, `aggregate` and `criteria`
the cross-experiment tables and the validation protocol. Only sets.py and stage.py touch files.
"""
