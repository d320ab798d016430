"""The report (bench.report): labels, tables and pages built from synthetic rows following docs/rows.md."""

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.report import cli as report_cli
from bench.report import render as report

SIZES = (256, 512, 1024, 2048, 4096)
FIGURES = ("complexity_time", "complexity_memory", "speedup", "accuracy")


def _entry(impl, family, exact, hparams, time_ms, memory_bytes, declared, status=lambda n: "ok"):
    return impl, family, exact, hparams, time_ms, memory_bytes, declared, status


# Curves with known answers: sdpa_flash 1e-6 N^2 + 0.05 ms; performer 2e-6 N m + 0.1 ms crosses it
# below N=512 for m=64; full runs out of memory at the largest N; linformer is skipped there.
ENTRIES = [
    _entry("full", "full", True, {}, lambda n: 2e-6 * n**2 + 0.05, lambda n: 4.0 * n**2, (2, 2),
           lambda n: "oom" if n == SIZES[-1] else "ok"),
    _entry("sdpa_flash", "flash", True, {}, lambda n: 1e-6 * n**2 + 0.05, lambda n: 2000.0 * n, (2, 1)),
    _entry("performer", "kernel", False, {"num_features": 64}, lambda n: 2e-6 * n * 64 + 0.1,
           lambda n: 600.0 * n + 512.0 * n, (1, 1)),
    _entry("performer", "kernel", False, {"num_features": 256}, lambda n: 2e-6 * n * 256 + 0.1,
           lambda n: 600.0 * n + 2048.0 * n, (1, 1)),
    _entry("linformer", "low_rank", False, {"proj_len": 128}, lambda n: 4e-4 * n + 0.2, lambda n: 900.0 * n, (1, 1),
           lambda n: "skipped" if n == SIZES[-1] else "ok"),
    _entry("xformers_cutlass", "flash", True, {}, None, None, (2, 1), lambda n: "unsupported"),
]  # fmt: skip
REASONS = {"ok": "", "oom": "needs 4.3 GiB, limit 4 GiB", "skipped": "predicted time over budget",
           "unsupported": "device cpu not in (cuda,)"}  # fmt: skip


def error_of(hparams: dict) -> float:
    """A deterministic error that shrinks with more features / a longer projection."""
    return 3.0 / np.sqrt(hparams.get("num_features", hparams.get("proj_len", 1)))


def synthetic_rows(run_id="run-a", host="host-a", device_name="cpu-a", causal=(False, True), seed=0):
    """Rows following docs/rows.md, timed with ~3% multiplicative noise."""
    rng = np.random.default_rng(seed)
    records = []
    for flag in causal:
        for impl, family, exact, hparams, time_ms, memory_bytes, (dt, dm), status_of in ENTRIES:
            for n in SIZES:
                status = status_of(n)
                ok = status == "ok"
                time = time_ms(n) * rng.lognormal(0, 0.03) if ok else np.nan
                error = (1e-7 if exact else error_of(hparams)) if ok else np.nan
                records.append(
                    {
                        "run_id": run_id, "job_id": "", "cell_id": f"{impl}{hparams}{n}{flag}", "impl": impl,
                        "family": family, "exact": exact, "mode": "fwd", "batch": 1, "q_heads": 8, "kv_heads": 8,
                        "q_len": n, "kv_len": n, "head_dim": 64, "causal": flag, "padding": 0.0,
                        "dtype": "float32", "device": "cpu", "seq_len": n, "hparams": json.dumps(hparams),
                        "hp_num_features": hparams.get("num_features", np.nan),
                        "hp_proj_len": hparams.get("proj_len", np.nan),
                        "time_complexity": f"O(N^{dt})", "memory_complexity": f"O(N^{dm})",
                        "declared_time_exponent": float(dt), "declared_memory_exponent": float(dm),
                        "status": status, "reason": REASONS[status], "setup_ms": 1.0 if ok else np.nan,
                        "time_ms_median": time, "time_ms_iqr": 0.02 * time, "time_ms_min": 0.98 * time,
                        "time_ms_samples": json.dumps([time] * 3 if ok else []), "n_samples": 3 if ok else 0,
                        "noisy": False, "peak_bytes": memory_bytes(n) if ok else np.nan,
                        "predicted_bytes": 4.0 * n**2, "flops": 4.0 * 8 * 64 * n**2, "flop_per_s": np.nan,
                        "gemm_flop_per_s": 1e11, "pct_of_gemm": np.nan, "error_rel_l2": error,
                        "error_max_abs": 5 * error, "torch_version": "2.13.0", "device_name": device_name,
                        "cpu_model": f"{device_name} model", "threads": 2, "git_commit": "abc1234",
                        "hostname": host, "slurm_job_id": "", "started": "2025-11-22T00:00:00+00:00",
                        "timestamp": "2025-11-22T00:00:00+00:00", "exclusive": True,
                    }
                )  # fmt: skip
    return pd.DataFrame.from_records(records)


def make_run_dir(path: Path, host: str) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"sweep:\n  seq_len: {list(SIZES)}\nlabel: config-of-{host}\n")
    (path / "environment.json").write_text(json.dumps({"hostname": host, "cpu_model": f"{host} cpu", "threads": 2}))
    return path


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    """One run folder with failed, skipped and unsupported cells, reported once for every test here."""
    run_dir = make_run_dir(tmp_path_factory.mktemp("results") / "run-a", "host-a")
    return report.render_report(synthetic_rows(), [run_dir], run_dir, "sdpa_flash")


class ImageSources(HTMLParser):
    """Collects <img src> values and any attribute that would load something from outside the page."""

    def __init__(self):
        super().__init__()
        self.images, self.external, self.scripts = [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.scripts += tag == "script"
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for name in ("src", "href"):
            if attrs.get(name) and not attrs[name].startswith(("data:", "#")):
                self.external.append(attrs[name])


def decoded_pngs(html: str) -> list[Image.Image]:
    """The page's <img> elements decoded from their data: URIs (fails on anything else)."""
    parser = ImageSources()
    parser.feed(html)
    assert not parser.external and not parser.scripts
    prefix = "data:image/png;base64,"
    assert all(src.startswith(prefix) for src in parser.images)
    return [Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :]))) for src in parser.images]


def markdown_rows(markdown: str, section: str, first_cells: tuple) -> list[list[str]]:
    """The rows of the Markdown tables under the '## <section>' heading whose leading cells equal first_cells."""
    text = markdown.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    return [r for r in rows if tuple(r[: len(first_cells)]) == first_cells]


def test_series_are_labelled_by_the_hyperparameters_that_vary():
    rows = report.label_rows(synthetic_rows(causal=(False,)))
    assert set(rows["series"]) == {
        "full", "sdpa_flash", "performer m=64", "performer m=256", "linformer", "xformers_cutlass"
    }  # fmt: skip
    performer = rows[rows["impl"] == "performer"]
    assert dict(zip(performer["hp_label"], performer["hp_order"], strict=True)) == {"m=64": 0, "m=256": 1}
    assert set(rows["kv"]) == {"N"}


def test_only_axes_with_several_attempted_values_become_panels():
    rows = synthetic_rows()
    unsupported_half = rows[rows["status"] == "unsupported"].assign(dtype="float16")
    rows = report.label_rows(pd.concat([rows, unsupported_half], ignore_index=True))
    assert report.varying_axes(rows) == ["causal"]


def test_report_writes_html_markdown_and_figures(single_run):
    run_dir = single_run.parent
    assert single_run.name == "report.html"
    markdown = (run_dir / "report.md").read_text()
    for name in FIGURES:
        assert (run_dir / f"{name}.png").stat().st_size > 10_000
        assert f"]({name}.png)" in markdown


def test_html_is_self_contained_with_every_figure_as_a_valid_png(single_run):
    images = decoded_pngs(single_run.read_text())
    assert len(images) == len(FIGURES)
    for image in images:
        image.verify()
        assert image.format == "PNG" and min(image.size) > 300


def test_failed_skipped_and_unsupported_cells_appear_in_the_page(single_run):
    html = single_run.read_text()
    markdown = (single_run.parent / "report.md").read_text()
    for reason in filter(None, REASONS.values()):
        assert reason in html
    assert "Did not finish at N=4096: full (oom), linformer (skipped)." in html
    unsupported = markdown_rows(markdown, "Status", ("xformers_cutlass", "unsupported"))
    assert [r[3] for r in unsupported] == ["False", "True"] and unsupported[0][4] == ", ".join(map(str, SIZES))
    counts = markdown_rows(markdown, "Status", ("full",))[0]
    assert counts[:3] == ["full", "8", "2"]  # ok, oom columns of the status counts


def test_exponents_and_crossovers_match_the_synthetic_curves(single_run):
    markdown = (single_run.parent / "report.md").read_text()
    flash = markdown_rows(markdown, "Fitted exponents", ("False", "sdpa_flash"))[0]
    assert float(flash[2]) == pytest.approx(2.0, abs=0.15) and flash[3:5] == ["2", ""]  # time: fitted, declared, check
    assert flash[5] == "1024..4096 (3, 1.000)"  # the upper half of 256..4096
    performer = markdown_rows(markdown, "Fitted exponents", ("False", "performer m=64"))[0]
    assert float(performer[7]) == pytest.approx(1.0, abs=0.02)  # memory exponent
    crossing = markdown_rows(markdown, "Crossovers", ("False", "performer m=64"))[0]
    n_cross = float(re.fullmatch(r"N ≈ (\d+)", crossing[2]).group(1))
    assert 256 < n_cross < 512  # 2e-6*64 N + 0.1 = 1e-6 N^2 + 0.05 near N = 300
    assert crossing[3] == "N <= 256"  # 1112 B/token against flash's 2000
    assert markdown_rows(markdown, "Crossovers", ("False", "performer m=256"))[0][3] == "not in range"  # 2648 B/token


def test_accuracy_table_compares_hyperparameter_settings(single_run):
    markdown = (single_run.parent / "report.md").read_text()
    for m in (64, 256):
        row = markdown_rows(markdown, "Accuracy", ("True", "performer", f"num_features={m}", str(SIZES[-1])))[0]
        assert float(row[4]) == pytest.approx(error_of({"num_features": m}), rel=1e-2)
        assert row[7].endswith("×")  # speedup against the baseline beside the error


def test_merged_runs_from_the_command_line_show_both_environments(tmp_path):
    run_dirs = []
    for host in ("host-a", "host-b"):
        run_dir = make_run_dir(tmp_path / f"run-{host}", host)
        rows = synthetic_rows(f"run-{host}", host, f"cpu-{host}", causal=(False,))
        rows = rows[rows["impl"].isin(["full", "sdpa_flash"])]  # two entries are enough to merge
        rows.to_csv(run_dir / "rows.csv", index=False)  # read back by bench.rows.load
        run_dirs.append(str(run_dir))
    assert report_cli.main([*run_dirs, "--baseline", "full", "--out", str(tmp_path / "merged")]) == 0
    html = (tmp_path / "merged" / "report.html").read_text()
    for host in ("host-a", "host-b"):
        assert f"config-of-{host}" in html and f"{host} cpu" in html  # config.yaml, environment.json
        assert f"device_name=cpu-{host}" in html  # one panel per machine
    assert "Varying besides N: device_name." in html
    assert "Crossovers vs full" in html and "sdpa_flash vs full: faster from N &lt;= 256" in html


def test_report_without_ok_cells_says_so(tmp_path):
    rows = synthetic_rows(causal=(False,))
    rows = rows[rows["status"] == "unsupported"]
    html = report.render_report(rows, [tmp_path], tmp_path, "sdpa_flash").read_text()
    assert "Baseline &#39;sdpa_flash&#39; has no ok cells" in html and "No cell finished with status ok." in html
    assert "device cpu not in (cuda,)" in html and "<img" not in html


def test_command_line_rejects_a_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_cli.main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    assert "not a folder:" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium on PATH to render report.html")
def test_report_renders_in_headless_chromium(single_run, tmp_path):
    flags = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--window-size=1400,3000",
    ]  # fmt: skip
    url = single_run.as_uri()
    screenshot = tmp_path / "report.png"
    shot = subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=60)
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=60)
    for result in (shot, dom):
        # the page has no scripts, so any console message means something failed to load or parse
        assert ":CONSOLE" not in result.stderr, result.stderr
    image = Image.open(screenshot)
    assert image.size == (1400, 3000)
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 100  # text and plots, not a blank page
    assert len(decoded_pngs(dom.stdout)) == len(FIGURES)  # the browser's DOM holds every figure
    assert "Attention Zoo benchmark report" in dom.stdout
