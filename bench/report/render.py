"""`python -m bench.report RESULTS_DIR [...]`: complexity plots, exponents, crossovers, report.html and report.md.

The report reads rows (docs/rows.md) and never re-runs a cell. Rows are labelled with a `series`
(impl, plus the hyperparameters that vary for that impl: "performer m=64") and a `panel` (the
values of the problem axes that vary across the rows: "mode=fwd, causal=True"); every figure,
fit and table is then per (panel, series).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path

import jinja2
import markupsafe
import numpy as np
import pandas as pd

from bench import fit
from bench.report import analysis, cautions, decode, figures, measurements, recall, style
from bench.rows import load

# Problem axes other than N; those with more than one value become panels / group columns.
BASELINE = "sdpa_flash"  # the default entry speedups and crossovers compare with
RECALL_MARGIN = 0.05  # an approximate entry within this much of the best exact MQAR accuracy counts as keeping up
AXES = (
    "mode",
    "causal",
    "dtype",
    "device",
    "device_name",
    "batch",
    "q_heads",
    "kv_heads",
    "head_dim",
    "kv",
    "padding",
    "lengths",
    "documents",
    "inputs",
    "decode_tokens",
)
ENV_COLUMNS = (
    "torch_version", "device_name", "cpu_model", "threads", "git_commit", "hostname", "slurm_job_id", "exclusive",
)  # fmt: skip
HP_SHORT = {"num_features": "m", "proj_len": "k", "window": "w"}  # legend-friendly names
TEMPLATES = Path(__file__).parent / "templates"
FIGURES_JSON = "figures.json"


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None, baseline: str = BASELINE) -> Path:
    """Load the rows of one or more run folders and write the report into out_dir (default: the first run's)."""
    run_dirs = [Path(d) for d in run_dirs]
    return render_report(load(*run_dirs), run_dirs, Path(out_dir) if out_dir else run_dirs[0], baseline)


def _number(value) -> str:
    """An hyperparameter value as written by a person: 64, not 64.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _hp_label(columns: Sequence[str], values: Sequence) -> str:
    """'m=64 k=128': the given hp_<name> columns with short names, missing values left out."""
    return " ".join(
        f"{HP_SHORT.get(c[3:], c[3:])}={_number(v)}" for c, v in zip(columns, values, strict=True) if pd.notna(v)
    )


def label_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Add the columns the report groups by: kv ("N" for self-attention), series, hp_label, hp_order.

    Rows come back sorted as every table and legend lists them: each peer beside its own entry,
    one impl's settings in numeric order (k=32 before k=128).
    """
    rows = rows.copy()
    # decode rows' kv_len is L + T: their keys are the context, as self-attention's are the sequence
    own_keys = (rows["kv_len"] == rows["q_len"]) | (rows["mode"] == "decode")
    rows["kv"] = np.where(own_keys, "N", rows["kv_len"].astype(str))
    hp_columns = sorted(c for c in rows.columns if c.startswith("hp_"))
    rows["hp_label"] = ""
    rows["hp_order"] = 0
    for _, cells in rows.groupby("impl"):
        varying = [c for c in hp_columns if cells[c].nunique(dropna=True) > 1]
        if varying:
            rows.loc[cells.index, "hp_label"] = [
                _hp_label(varying, row) for row in cells[varying].itertuples(index=False)
            ]
            # the order in which one impl's settings are listed and joined: by value, not by label text
            rows.loc[cells.index, "hp_order"] = cells.groupby(varying, dropna=False, sort=True).ngroup()
    rows["series"] = (rows["impl"] + " " + rows["hp_label"]).str.strip()
    order = sorted(range(len(rows)), key=lambda i: (style.entry_order(rows["impl"].iloc[i]), rows["hp_order"].iloc[i]))
    return rows.iloc[order]


def varying_axes(rows: pd.DataFrame) -> list[str]:
    """The problem axes (AXES) with more than one value among the cells that were attempted."""
    attempted = rows[rows["status"] != "unsupported"]
    return [a for a in AXES if a in rows.columns and attempted[a].nunique(dropna=False) > 1]


def _describe(cells: pd.Series | dict, axes: Sequence[str]) -> str:
    return ", ".join(f"{a}={cells[a]}" for a in axes)


def render_report(
    rows: pd.DataFrame,
    run_dirs: Sequence[Path],
    out_dir: Path,
    baseline: str,
    error_budget: float = analysis.ERROR_BUDGET,
) -> Path:
    """Write report.html, report.md, the figures (PNG) and figures.json into out_dir; returns report.html's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, axes, constants = _labelled(rows)
    frames = _analyse(rows, axes, baseline)
    drawn = _draw(rows, frames, baseline) if (rows["status"] == "ok").any() else {}
    decoding = decode.decode_rows(rows)
    if decoding["status"].eq("ok").any():
        exponents = {(f["panel"], f["series"]): f["exponent"] for _, f in frames["time_fit"].iterrows()}
        drawn.update(decode.decode_figures(decoding, exponents, figures.series_styles(rows)))
    recalled = recall.recall_rows(rows)
    if recalled["status"].eq("ok").any():
        drawn["recall"] = recall.recall_figure(recalled, figures.series_styles(rows))
    # which colour each series got in each figure, read back from the artists (tests/test_report_page.py)
    colours = {name: figures.drawn_colours(figure) for name, figure in drawn.items()}
    (out_dir / FIGURES_JSON).write_text(json.dumps(colours, indent=1))
    tables, flop_unit = _tables(rows, frames, axes, baseline)
    tables["decode_steps"] = decode.step_table(decoding)
    tables["decode_crossovers"] = decode.crossover_table(decoding, baseline, axes)
    tables["recall"] = recall.recall_table(recalled)
    context = {
        "title": "Attention Zoo benchmark report",
        "baseline": baseline,
        "constants": constants,
        "axes": axes,
        "notes": _notes(rows, run_dirs, baseline),
        "headlines": analysis.headlines(rows, frames["crossing"], error_budget, baseline)
        + recall.recall_headlines(recalled, RECALL_MARGIN),
        "images": _write_images(drawn, out_dir),
        "runs": [section for d in run_dirs for section in _run_sections(d)],
        "row_count": len(rows),
        "ok_count": int((rows["status"] == "ok").sum()),
        "tolerance": fit.DECLARED_EXPONENT_TOLERANCE,
        "flop_unit": flop_unit,
        "error_budget": error_budget,
        "low_samples": cautions.LOW_SAMPLES,
        "bandwidth": decode.ceiling_text(decoding) if len(decoding) else "",
    }
    html = _render("report.html.j2", True, context, {k: _html_table(t) for k, t in tables.items()})
    markdown = _render("report.md.j2", False, context, {k: _markdown_table(t) for k, t in tables.items()})
    (out_dir / "report.md").write_text(markdown)
    path = out_dir / "report.html"
    path.write_text(html)
    return path


def _labelled(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str], str]:
    """The rows with their series and panel labels (panels in the order of their values: head_dim=64 before 128),
    the axes that vary, and the constant ones as a caption."""
    rows = label_rows(rows)
    axes = varying_axes(rows)
    if axes and len(rows):
        rows["panel"] = rows.apply(_describe, axis=1, axes=axes)
        panel_order = rows.drop_duplicates("panel").sort_values(axes, kind="stable")["panel"].tolist()
        rows = rows.iloc[np.argsort(rows["panel"].map(panel_order.index).to_numpy(), kind="stable")]
    else:
        rows["panel"] = ""
    constant = [a for a in AXES if a in rows.columns and a not in axes and rows[a].notna().any()]
    return rows, axes, _describe(rows.iloc[0], constant) if len(rows) else ""


def _notes(rows: pd.DataFrame, run_dirs: Sequence[Path], baseline: str) -> list[str]:
    """Warnings above the report: nothing measured, a moving GEMM ceiling, many noisy cells, a baseline with no ok
    cells, cells measured by several runs (pooled), jobs that measured at overlapping times."""
    notes = []
    if not (rows["status"] == "ok").any():
        counts = ", ".join(f"{n} {status}" for status, n in rows["status"].value_counts().items()) or "no rows"
        notes.append(f"No cell was measured ({counts}): every cell failed or is unsupported; the reasons are below.")
    ceilings = [c for d in run_dirs for run in _run_sections(d) for c in run["gemm_ceilings"]]
    notes += cautions.ceiling_drift(ceilings) + cautions.noisy_cells(rows)
    if baseline not in set(rows.loc[rows["status"] == "ok", "series"]):
        present = ", ".join(sorted(rows["series"].unique())) or "none"
        notes.append(f"Baseline '{baseline}' has no ok cells in these results (present: {present}); no speedups.")
    repeated = rows[rows["status"] == "ok"].groupby("cell_id")["run_id"].nunique()
    if (repeated > 1).any():
        notes.append(
            f"{int((repeated > 1).sum())} cells were measured in more than one run; their medians are pooled here. "
            "To see a change between two runs, compare them: python -m bench.report A --compare B."
        )
    for _, overlap in analysis.concurrent_measurements(rows).iterrows():
        notes.append(
            f"Measured concurrently on {overlap['hostname']}: jobs {overlap['jobs']} ran {overlap['cells']} cells "
            f"at overlapping times ({(overlap['end'] - overlap['start']).total_seconds():.1f} s from "
            f"{overlap['start']:%Y-%m-%d %H:%M:%S} UTC). "
            "Jobs measuring at once slow each other down: these timings are not comparable with the others."
        )
    return notes


def _analyse(rows: pd.DataFrame, axes: list[str], baseline: str) -> dict[str, pd.DataFrame]:
    """The fits and comparisons every figure and table is drawn from."""
    groups = [*axes, "panel", "series"]
    speedup = analysis.speedup(rows, baseline, axes)
    fits = {}
    for name, value, declared in (
        ("time", "time_ms_median", "declared_time_exponent"),
        ("memory", "peak_bytes", "declared_memory_exponent"),
    ):
        fitted = fit.fitted_exponents(rows, groups, value, declared, complexity=f"{name}_complexity")
        fits[f"{name}_fit"] = analysis.judged_fits(fitted, rows, value, groups)
    return {
        **fits,
        "crossing": analysis.crossover_frame(rows, baseline, axes),
        "speedup": speedup,
        "accuracy": analysis.accuracy(rows, speedup, axes),
    }


def _draw(rows: pd.DataFrame, frames: dict[str, pd.DataFrame], baseline: str) -> dict:
    """The figures the rows allow, by name: complexity (time, memory), throughput, speedup, accuracy."""
    styles = figures.series_styles(rows)
    drawn = {}
    for name, value, ylabel, scale, fitted in (
        ("complexity_time", "time_ms_median", "time (ms, median)", 1.0, frames["time_fit"]),
        ("complexity_memory", "peak_bytes", "peak memory (MiB)", 2.0**-20, frames["memory_fit"]),
    ):
        exponents = {(f["panel"], f["series"]): f["exponent"] for _, f in fitted.iterrows()}
        drawn[name] = figures.complexity_figure(rows, value, ylabel, exponents, styles, scale)
    if (rows["flop_per_s"] > 0).any():
        drawn["throughput"] = figures.throughput_figure(rows, styles)
    speedup, accuracy = frames["speedup"], frames["accuracy"]
    if len(speedup):
        drawn["speedup"] = figures.speedup_figure(speedup, baseline, styles)
    if len(accuracy):
        baseline_ms = speedup.groupby(["panel", "seq_len"])["base_ms"].first().to_dict()
        n_values = _spread(sorted(accuracy["seq_len"].unique()))
        drawn["accuracy"] = figures.accuracy_figure(accuracy, n_values, baseline_ms, styles)
    return drawn


def _write_images(drawn: dict, out_dir: Path) -> dict[str, dict[str, str]]:
    """Each figure as a PNG file in out_dir and as a data URI for the self-contained HTML."""
    images = {}
    for name, figure in drawn.items():
        png = figures.png_bytes(figure)
        (out_dir / f"{name}.png").write_bytes(png)
        images[name] = {"file": f"{name}.png", "data_uri": "data:image/png;base64," + base64.b64encode(png).decode()}
    return images


def _tables(rows: pd.DataFrame, frames: dict[str, pd.DataFrame], axes: list[str], baseline: str):
    """The report's tables, by name, as frames of display strings, and the FLOP/s unit of the throughput table."""
    measured, flop_unit = measurements.measurement_tables(rows, axes)
    return {
        **measured,
        "exponents": analysis.exponent_table(frames["time_fit"], frames["memory_fit"], axes),
        "crossovers": analysis.crossover_table(frames["crossing"], axes, baseline),
        "speedup": analysis.speedup_table(frames["speedup"], axes),
        "efficiency": analysis.efficiency_table(rows, axes),
        "accuracy": analysis.accuracy_table(frames["accuracy"], axes),
        "status_counts": analysis.status_counts(rows),
        "failed": analysis.not_measured(rows, axes, unsupported=False),
        "unsupported": analysis.not_measured(rows, axes, unsupported=True),
        "run_environment": analysis.environment_columns(rows, ENV_COLUMNS),
    }, flop_unit


def _spread(n_values: list, count: int = 4) -> list:
    """At most `count` of the sorted N values, evenly spaced by index, always with the smallest and largest."""
    picks = np.unique(np.round(np.linspace(0, len(n_values) - 1, min(count, len(n_values)))).astype(int))
    return [int(n_values[i]) for i in picks]


def _run_sections(run_dir: Path) -> list[dict]:
    """Each run's resolved config (text) and environment.json (key/value pairs): the folder's own, else its jobs'."""
    folders = (
        [run_dir] if (run_dir / "config.yaml").exists() else sorted(p.parent for p in run_dir.glob("*/config.yaml"))
    )
    sections = []
    for folder in folders or [run_dir]:
        config_path, env_path = folder / "config.yaml", folder / "environment.json"
        environment = json.loads(env_path.read_text()) if env_path.exists() else {}
        sections.append(
            {
                "name": str(folder.relative_to(run_dir.parent)),
                "path": str(folder),
                "config": config_path.read_text() if config_path.exists() else "(no config.yaml in this folder)",
                "environment": {
                    key: value if isinstance(value, str | int | float) else json.dumps(value)
                    for key, value in environment.items()
                },
                "gemm_ceilings": environment.get("gemm_ceilings", []),
            }
        )
    return sections


def _html_table(table: pd.DataFrame) -> str:
    return table.to_html(index=False, border=0, classes="table", na_rep="") if len(table) else ""


def _markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (cells are already strings; pipes escaped)."""
    if not len(table):
        return ""

    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    body = [line(table.columns), "|" + "---|" * len(table.columns)]
    body += [line(["" if pd.isna(c) else c for c in row]) for row in table.itertuples(index=False)]
    return "\n".join(body)


def _render(template: str, html: bool, context: dict, tables: dict) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    if html:  # tables arrive as HTML pandas already escaped
        tables = {k: markupsafe.Markup(v) for k, v in tables.items()}
    return environment.get_template(template).render(**context, tables=tables)
