"""The comparison of evaluated models: the markdown table and the trilemma plot (`trilemma compare`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def cell(value: Any, digits: int = 3) -> str:
    return format_value(value, digits, missing="–")


def metric_cell(result: dict, section: str, key: str, digits: int = 3) -> str:
    """A metric's cell: its value, and ``± sd`` over the sampling seeds when several were scored (``--repeats``)."""
    from trilemma.metrics.evaluate import repeat_sd

    text = cell(result[section][key], digits)
    spread = repeat_sd(result, f"{section}.{key}")
    return text if spread is None or result[section][key] is None else f"{text} ± {spread:.{digits}f}"



def sampling_text(result: dict) -> str:
    src = result.get("source", {})
    if src.get("kind") != "run":
        return src.get("kind", "")
    if src.get("run_kind") == "ddgan":             # T generator calls; sampler options do not apply
        return f"G, T = {src.get('nfe', '?')} passes"
    one_pass = ONE_PASS.get(src.get("run_kind", ""))
    if one_pass:                                   # no sampler options apply to these generators
        return one_pass
    sampling = src.get("sampling") or {}
    parts = [str(sampling.get("sampler") or "")]
    if sampling.get("steps"):
        parts.append(f"{sampling['steps']} steps")
    return " ".join(p for p in parts if p) or src.get("run_kind", "")



# What the table, the plot and the warnings read from an eval result: section -> {field: kind}.
# "number": int or float, finite, or null; "count": an integer >= 0 or null; "text": a string.
RESULT_FIELDS: dict[str, dict[str, str]] = {
    "quality": {"fid": "number", "kid_mean": "number", "precision": "number", "density": "number",
                "classifier_score_mean": "number"},
    "coverage": {"recall": "number", "coverage": "number", "modes_hit": "count", "num_classes": "count",
                 "class_js": "number"},
    "memorisation": {"copy_fraction": "number"},
    "speed": {"nfe": "number", "images_per_s": "number", "peak_memory_mb": "number"},
    "feature_net": {"name": "text", "objective": "text", "hash": "text"},
    "reference": {"dataset": "text", "split": "text", "n": "count"},
}


def check_result(result: Any, where: str) -> dict:
    """An eval result as ``compare`` reads it, checked field by field; a one-line
    :class:`~trilemma.errors.TrilemmaError` naming ``where`` and the field otherwise."""
    from trilemma.errors import TrilemmaError

    def fail(field: str, want: str, got: Any) -> TrilemmaError:
        shown = repr(got) if len(repr(got)) <= 40 else repr(got)[:37] + "..."
        return TrilemmaError(f"{where}: field '{field}' must be {want}, got {shown} (not an unedited trilemma eval "
                             f"result?)")

    if not isinstance(result, dict):
        raise fail("(top level)", "an object", type(result).__name__)
    n = result.get("n")
    if type(n) is not int or n < 1:
        raise fail("n", "a positive integer", n)
    if not isinstance(result.get("source", {}), dict):
        raise fail("source", "an object", result.get("source"))
    for section, fields in RESULT_FIELDS.items():
        values = result.get(section)
        if not isinstance(values, dict):
            raise fail(section, "an object", values)
        for name, kind in fields.items():
            value, field = values.get(name), f"{section}.{name}"
            if name not in values and kind != "text":
                raise fail(field, "present (a number or null)", "nothing")
            if kind == "text" and not isinstance(value, str):
                raise fail(field, "a string", value)
            if kind == "count" and value is not None and (type(value) is not int or value < 0):
                raise fail(field, "an integer >= 0 or null", value)
            if kind == "number" and value is not None and (type(value) not in (int, float) or not math.isfinite(value)):
                raise fail(field, "a finite number or null", value)
    if result["speed"]["images_per_s"] is not None and result["speed"]["images_per_s"] <= 0:
        raise fail("speed.images_per_s", "a positive number or null", result["speed"]["images_per_s"])
    return result


def markdown_table(rows: list[tuple[str, dict]]) -> str:
    header = [name for name, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for label, result in rows:
        cells = [label] + [get(result) for _, get in COLUMNS[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    nets = sorted({f"`{r['feature_net']['name']}` ({r['feature_net']['objective']}, test accuracy "
                   f"{cell(r['feature_net'].get('test_accuracy'), 4)})" for _, r in rows})
    refs = sorted({f"{r['reference']['dataset']} {r['reference']['split']} split "
                   f"({r['reference']['n']} images)" for _, r in rows})
    notes = [
        "",
        f"Scored against: {'; '.join(refs)}. Feature network: {'; '.join(nets)}.",
        "↓ lower is better, ↑ higher is better; density is best near 1; copy frac. is the share of "
        "samples closer to the training set than the closest 1% of test images (about 0.01 for a "
        "model that does not copy). Metrics: docs/metrics.md.",
    ]
    if any(r.get("repeats") for _, r in rows):
        notes.append("n × K: K independent sets of n samples (sampling seeds) were scored; FID, precision, recall "
                     "and coverage are their mean ± standard deviation, still scores at n.")
    return "\n".join(lines + notes + [""] + consistency_warnings(rows)).rstrip() + "\n"



def plot_trilemma(rows: list[tuple[str, dict]], path: Path, x_axis: str = "images-per-s") -> Path:
    """Quality (FID, y, log) against speed (x, log); colour = recall, marker size = coverage.

    Rows without a speed (``--samples`` results, reference rows) are drawn as dashed
    horizontal lines at their FID, so a run can be read against them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from trilemma.viz import save_figure

    key, xlabel = SPEED_AXES[x_axis]
    placed = [(label, r) for label, r in rows if r["speed"].get(key) and r["quality"]["fid"] is not None]
    lines = [(label, r) for label, r in rows if (label, r) not in placed and r["quality"]["fid"] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    if placed:
        xs = np.array([r["speed"][key] for _, r in placed], dtype=float)
        ys = np.array([max(r["quality"]["fid"], 1e-3) for _, r in placed])
        recall = [r["coverage"]["recall"] or 0.0 for _, r in placed]
        sizes = [60 + 440 * (r["coverage"]["coverage"] or 0.0) for _, r in placed]
        sc = ax.scatter(xs, ys, c=recall, s=sizes, cmap="viridis", vmin=0, vmax=1,
                        edgecolors="black", linewidths=0.8, zorder=3)
        fig.colorbar(sc, ax=ax, label="recall (colour)")
        for (label, _), x, y in zip(placed, xs, ys):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(9, 6), fontsize=9)
        ax.set_xscale("log")
        ax.set_xlim(xs.min() / 4, xs.max() * 4)  # > one decade, so a labelled tick; room for labels
        if x_axis == "nfe":
            ax.invert_xaxis()  # faster to the right, like images/s
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
    for label, r in lines:
        y = max(r["quality"]["fid"], 1e-3)
        ax.axhline(y, ls="--", lw=1, color="grey", zorder=1)
        ax.annotate(f"{label} (no speed)", (0.01, y), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(0, 3), fontsize=8, color="dimgrey")
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    subs = (1.0, 2.0, 5.0) if high / max(low, 1e-12) > 10 else tuple(float(k) for k in range(1, 10))
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))            # labelled ticks within a decade too
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel if placed else "(no row has a speed)")
    ax.set_ylabel("FID (log scale, lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("The generative learning trilemma: quality vs speed\n"
                 "colour = recall, marker size = coverage (higher is better for both)", fontsize=10)
    return save_figure(fig, path)


SPEED_AXES = {"images-per-s": ("images_per_s", "images per second (log scale)"),
              "nfe": ("nfe", "network evaluations per image (log scale, fewer is faster)")}


ONE_PASS = {"vae": "decoder, 1 pass", "gan": "G(z), 1 pass", "autoencoder": "decoder of N(0, I)"}


COLUMNS = (  # header, function of a result -> cell text
    ("model", None),
    ("sampling", sampling_text),
    ("n", lambda r: cell(r["n"]) + (f" × {len(r['repeats']['seeds'])}" if r.get("repeats") else "")),
    ("FID ↓", lambda r: metric_cell(r, "quality", "fid", 2)),
    ("KID ↓", lambda r: cell(r["quality"]["kid_mean"], 3)),
    ("precision ↑", lambda r: metric_cell(r, "quality", "precision")),
    ("density", lambda r: cell(r["quality"]["density"])),
    ("class. score ↑", lambda r: cell(r["quality"]["classifier_score_mean"], 2)),
    ("recall ↑", lambda r: metric_cell(r, "coverage", "recall")),
    ("coverage ↑", lambda r: metric_cell(r, "coverage", "coverage")),
    ("modes hit", lambda r: (f"{r['coverage']['modes_hit']}/{r['coverage']['num_classes']}"
                             if r["coverage"]["modes_hit"] is not None else "–")),
    ("class JS ↓", lambda r: cell(r["coverage"]["class_js"], 4)),
    ("copy frac.", lambda r: cell(r["memorisation"]["copy_fraction"])),
    ("NFE ↓", lambda r: cell(r["speed"]["nfe"])),
    ("img/s ↑", lambda r: cell(r["speed"]["images_per_s"], 1)),
    ("peak MB", lambda r: cell(r["speed"]["peak_memory_mb"], 0)),
)


def consistency_warnings(rows: list[tuple[str, dict]]) -> list[str]:
    """Ways in which the rows were not scored the same way (so are not comparable)."""
    warnings = []
    for what, get in (("feature networks", lambda r: f"{r['feature_net']['name']} {r['feature_net']['hash']}"),
                      ("reference sets", lambda r: f"{r['reference']['dataset']} {r['reference']['split']}"),
                      ("sample counts n", lambda r: r["n"])):
        values = {str(get(r)) for _, r in rows}
        if len(values) > 1:
            warnings.append(f"**Warning:** the rows use different {what} ({', '.join(sorted(values))}); "
                            f"their numbers are not directly comparable.")
    speed_devices = {r["speed"]["device"] for _, r in rows if r["speed"].get("device")}
    if len(speed_devices) > 1:
        warnings.append(f"**Warning:** speeds were measured on different devices "
                        f"({', '.join(sorted(speed_devices))}).")
    return warnings


def format_value(value, digits: int = 3, missing: str = "n/a") -> str:
    """A metric for a table or summary: ``digits`` decimals for floats, ``missing`` for None."""
    if value is None:
        return missing
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}f}"
    return str(value)
