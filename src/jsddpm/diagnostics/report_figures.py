"""The report's figures: matplotlib (Agg canvas) PNGs from the stored figure data. Pure: dicts and
arrays in, PNG bytes out.

Figure data conventions (what the families' `detail` return):
- {"x", "real", "synthetic"[, "null_low", "null_high"]} with numeric x: curves (log-log for spectra);
- the same with string x (labels): bars of the synthetic / real ratio per label;
- {"real", "synthetic"} without x: per-sample values, drawn as overlaid histograms;
- a 2-D list: a map (e.g. the pixel significance map).
"""

from __future__ import annotations

import io
import math

import numpy as np

REAL_COLOUR, SYNTH_COLOUR = "#1f77b4", "#d62728"
UTILITY_METRIC_LABELS = {"dice": "Dice (lesion slices)", "sensitivity": "lesion-wise sensitivity",
                         "fp_per_slice": "false positives per slice", "subject_dice": "per-subject Dice"}


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return buf.getvalue()


def _new_figure(n_panels: int, width: float = 3.6, height: float = 2.8):
    from matplotlib.figure import Figure

    cols = min(n_panels, 4)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows))
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]


def _arr(v) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in v], dtype=float)


def _panel(ax, key: str, entry) -> bool:
    """Draw one figure-data entry; False when its shape is not one the report knows."""
    if isinstance(entry, list) and entry and isinstance(entry[0], list):
        m = _arr(np.asarray(entry, dtype=object).ravel()).reshape(len(entry), -1)
        lim = max(float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.0, 1e-6)
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.figure.colorbar(im, ax=ax, fraction=0.046, label="signed -log10 p (FDR)")
        ax.set_xticks([])
        ax.set_yticks([])
    elif isinstance(entry, dict) and "real" in entry and "synthetic" in entry:
        real, synth = entry["real"], entry["synthetic"]
        if "x" in entry and entry["x"] and isinstance(entry["x"][0], str):
            r, s = _arr(real), _arr(synth)
            ratio = np.where(r > 0, s / np.where(r > 0, r, 1), np.nan)
            ax.bar(range(len(ratio)), ratio, color=SYNTH_COLOUR, alpha=0.8)
            ax.axhline(1.0, color="k", lw=1, ls="--")
            ax.set_xticks(range(len(ratio)), entry["x"], rotation=90, fontsize=6)
            ax.set_ylabel("synthetic / real")
        elif "x" in entry:
            x = _arr(entry["x"])
            if "null_low" in entry and "null_high" in entry:
                ax.fill_between(x, _arr(entry["null_low"]), _arr(entry["null_high"]), color="grey", alpha=0.3,
                                label="real vs real (95%)")
            ax.plot(x, _arr(real), color=REAL_COLOUR, label="real")
            ax.plot(x, _arr(synth), color=SYNTH_COLOUR, label="synthetic", ls="--")
            if key == "spectrum":
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set_xlabel("frequency (cycles / pixel)")
            ax.legend(fontsize=7)
        else:
            r, s = _arr(real), _arr(synth)
            r, s = r[np.isfinite(r)], s[np.isfinite(s)]
            if len(r) == 0 and len(s) == 0:
                return False
            both = np.concatenate([r, s])
            bins = np.linspace(both.min(), both.max() + 1e-12, 30)
            ax.hist(r, bins=bins, density=True, alpha=0.5, color=REAL_COLOUR, label="real")
            ax.hist(s, bins=bins, density=True, alpha=0.5, color=SYNTH_COLOUR, label="synthetic")
            ax.legend(fontsize=7)
    else:
        return False
    ax.set_title(key.replace("_", " "), fontsize=9)
    ax.tick_params(labelsize=7)
    return True


def _drawable(entry) -> bool:
    return (isinstance(entry, list) and bool(entry) and isinstance(entry[0], list)) or (
        isinstance(entry, dict) and "real" in entry and "synthetic" in entry)


def family_figure(title: str, detail: dict) -> bytes | None:
    """One panel per drawable entry of a family's figure data, under the family's title."""
    keys = [k for k, v in detail.items() if _drawable(v)]
    if not keys:
        return None
    fig, axes = _new_figure(len(keys))
    for ax, k in zip(axes, keys):
        if not _panel(ax, k, detail[k]):
            ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def sample_grid_figure(samples: dict) -> bytes | None:
    if "real_images" not in samples or "synthetic_images" not in samples:
        return None
    n = max(len(samples["real_images"]), len(samples["synthetic_images"]))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.6 * n, 3.4))
    for row, side in enumerate(("real", "synthetic")):
        images, masks = samples[f"{side}_images"], samples.get(f"{side}_masks")
        for i in range(n):
            ax = fig.add_subplot(2, n, row * n + i + 1)
            ax.set_axis_off()
            if i >= len(images):
                continue
            img = np.asarray(images[i])
            ax.imshow(img[0] if img.shape[0] == 1 else np.clip((img.transpose(1, 2, 0) + 1) / 2, 0, 1),
                      cmap="gray", vmin=-1, vmax=1)
            if masks is not None and np.asarray(masks[i]).any():
                ax.contour(np.asarray(masks[i], dtype=float), levels=[0.5], colors="#ff3030", linewidths=0.8)
            if i == 0:
                ax.set_title(side, fontsize=9, loc="left")
    return _png(fig)


def deviation_figure(diag: dict) -> bytes | None:
    """Every severity component's score, grouped as severity averages them (older outputs without
    groups: each component's z against the gate z0)."""
    sev = diag.get("severity") or {}
    comps = sev.get("components") or {}
    if not comps:
        return None
    from matplotlib.figure import Figure

    groups = sev.get("groups") or {}
    fig = Figure(figsize=(6.5, 0.3 * (len(comps) + len(groups)) + 1))
    ax = fig.add_subplot(1, 1, 1)
    if not groups:
        def capped(k):  # an absent component (mask collapse) is stored with z = None (inf)
            z = comps[k].get("z")
            return 50.0 if z is None else min(z, 50.0)

        names = sorted(comps, key=capped)
        z = [capped(k) for k in names]
        z0 = sev.get("z0", 2.0)
        ax.barh(range(len(names)), z, color=[SYNTH_COLOUR if v > z0 else "grey" for v in z])
        ax.axvline(z0, color="k", ls="--", lw=1)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("distance from the real-vs-real level (null SDs; capped at 50)")
        return _png(fig)
    labels, values, colours = [], [], []
    for g, rec in reversed(list(groups.items())):  # barh draws bottom-up: the first group on top
        for name in sorted(rec["components"], key=lambda n: comps[n]["score"]):
            labels.append(f"  {name}")
            values.append(comps[name]["score"])
            colours.append(SYNTH_COLOUR if comps[name]["score"] > 0 else "grey")
        labels.append(f"{g.replace('_', ' ')} (group {rec['score']:.2f})")
        values.append(rec["score"])
        colours.append("k")
    ax.barh(range(len(labels)), values, color=colours)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"severity score (0 = within {sev.get('z0', 2.0):g} null SDs of the real-vs-real level)")
    return _png(fig)


# ------------------------------------------------------------------------------------ utility
def utility_bars_figure(util: dict) -> bytes | None:
    """One panel per metric: a bar per arm (seed mean) with its 95% CI and the per-seed values as dots."""
    arms = util.get("arms") or {}
    if not arms:
        return None
    fig, axes = _new_figure(len(UTILITY_METRIC_LABELS), width=3.4, height=3.0)
    names = list(arms)
    colours = [REAL_COLOUR if a.startswith("real") and "synthetic" not in a else
               SYNTH_COLOUR if a == "synthetic" else "#9467bd" for a in names]
    for ax, (metric, label) in zip(axes, UTILITY_METRIC_LABELS.items()):
        recs = [arms[a][metric] for a in names]
        vals = _arr([r["value"] for r in recs])
        lo, hi = _arr([r["ci_low"] for r in recs]), _arr([r["ci_high"] for r in recs])
        ax.bar(range(len(names)), np.nan_to_num(vals), color=colours, alpha=0.8,
               yerr=[np.clip(np.nan_to_num(vals - lo), 0, None), np.clip(np.nan_to_num(hi - vals), 0, None)],
               capsize=3)  # a percentile CI of a pooled ratio can miss its seed mean on tiny sets
        for i, r in enumerate(recs):
            seeds = _arr(r.get("seeds") or [])
            ax.plot(np.full(len(seeds), i), seeds, "k.", ms=3)
        ax.set_xticks(range(len(names)), [n.replace("_plus_", "+\n") for n in names], fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle("13. Utility: segmenters scored on held-out real slices (bars: 95% CI; dots: seeds)",
                 fontsize=10, y=1.04)
    return _png(fig)


def utility_examples_figure(examples: dict) -> bytes | None:
    """Held-out real lesion slices: truth (red) and the predictions of the real-trained and the
    synthetic-trained segmenter (first seed, cyan)."""
    if "images" not in examples:
        return None
    from matplotlib.figure import Figure

    images = np.asarray(examples["images"])
    cols = [("truth", "truth"), ("real-trained", "pred_real"), ("synthetic-trained", "pred_synthetic")]
    cols = [(t, k) for t, k in cols if k in examples]
    fig = Figure(figsize=(1.9 * len(cols), 1.9 * len(images)))
    for i, img in enumerate(images):
        for j, (title, key) in enumerate(cols):
            ax = fig.add_subplot(len(images), len(cols), i * len(cols) + j + 1)
            ax.set_axis_off()
            ax.imshow(img, cmap="gray", vmin=-1, vmax=1)
            truth = np.asarray(examples["truth"][i], dtype=float)
            ax.contour(truth, levels=[0.5], colors="#ff3030", linewidths=0.8)
            if key != "truth":
                pred = np.asarray(examples[key][i], dtype=float)
                if pred.any():
                    ax.contour(pred, levels=[0.5], colors="#00e5ff", linewidths=0.8)
            if i == 0:
                ax.set_title(title, fontsize=9)
    return _png(fig)


def utility_figures(util: dict | None, examples: dict) -> dict[str, bytes]:
    """utility_bars (metrics per arm) and utility_examples (predictions on held-out lesion slices); the
    examples are the utility family's arrays (images, truth, pred_real, pred_synthetic)."""
    out = {}
    bars = utility_bars_figure(util or {})
    if bars:
        out["utility_bars"] = bars
    ex = utility_examples_figure(examples)
    if ex:
        out["utility_examples"] = ex
    return out


# ------------------------------------------------------------------------------------ pairing
def pairing_scatter_figure(detail: dict) -> bytes | None:
    """Per lesion pair: the reference segmenter's Dice against the pair's mask (fidelity) vs the lesion
    area, synthetic and held-out real pairs."""
    data = detail.get("fidelity_vs_area") or {}
    sides = [(label, data.get(key) or {}, colour, marker) for label, key, colour, marker in
             (("real (held out)", "real_pairs", REAL_COLOUR, "o"), ("synthetic", "synthetic_pairs", SYNTH_COLOUR, "x"))]
    if not any(s.get("area") for _, s, _, _ in sides):
        return None
    fig, (ax,) = _new_figure(1, width=5.0, height=3.4)
    for label, s, colour, marker in sides:
        area, fid = _arr(s.get("area") or []), _arr(s.get("fidelity") or [])
        if len(area):
            ax.scatter(area, fid, s=12, c=colour, marker=marker, alpha=0.6,
                       label=f"{label}: mean {np.nanmean(fid):.2f} ({len(fid)} pairs)")
    ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("lesion area (pixels, log scale)")
    ax.set_ylabel("fidelity (segmenter Dice vs mask)")
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    return _png(fig)


def pairing_worst_figure(examples: dict) -> bytes | None:
    """The synthetic lesion pairs of lowest fidelity: image, mask outline (red), prediction (cyan)."""
    if "worst_images" not in examples or not len(examples["worst_images"]):
        return None
    from matplotlib.figure import Figure

    images = np.asarray(examples["worst_images"])
    n = len(images)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.0 * cols, 2.2 * rows))
    for i, img in enumerate(images):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        ax.imshow(img, cmap="gray", vmin=-1, vmax=1)
        ax.contour(np.asarray(examples["worst_masks"][i], dtype=float), levels=[0.5], colors="#ff3030",
                   linewidths=0.8)
        pred = np.asarray(examples["worst_pred"][i], dtype=float)
        if pred.any():
            ax.contour(pred, levels=[0.5], colors="#00e5ff", linewidths=0.8)
        ax.set_title(f"#{int(examples['worst_index'][i])}: Dice {float(examples['worst_fidelity'][i]):.2f}",
                     fontsize=8)
    return _png(fig)


def pairing_figures(detail: dict, examples: dict) -> dict[str, bytes]:
    """pairing (fidelity vs lesion area) and pairing_worst (the worst synthetic pairs)."""
    out = {}
    for name, png in (("pairing", pairing_scatter_figure(detail)), ("pairing_worst", pairing_worst_figure(examples))):
        if png:
            out[name] = png
    return out
