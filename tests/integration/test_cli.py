"""The medqa-bench command line on hand-written run records (no models)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from medqa_core.cli import main

METRICS = ("bert_p", "bert_r", "bert_f1", "cosine", "use_p", "use_r", "use_f1")


PROVENANCE = {"git_sha": "abc", "versions": {"torch": "2.5"}, "hardware": {"gpu": None}}


def write_run(d: Path, bert_f1_values: list[float], run_means: list[float] | None = None) -> Path:
    """A run directory with one record; ``run_means``: bert_f1 of each of the record's runs (seeds)."""
    d.mkdir()
    ids = [f"e{i}" for i in range(len(bert_f1_values))]
    mean = sum(bert_f1_values) / len(bert_f1_values)
    rec = {
        "case_id": "llama-wikidoc", "model": "llama", "dataset": "wikidoc",
        "metrics": {**{m: 0.5 for m in METRICS}, "bert_f1": mean},
        "resources": {"train_seconds": 10.0, "peak_mem_mib": 100.0, "tokens_per_s": 1.0, "device": "cpu"},
        "per_example": {"ids": ids, **{m: [0.5] * len(ids) for m in METRICS}, "bert_f1": bert_f1_values},
        "provenance": PROVENANCE,
    }
    if run_means:
        rec["runs"] = [{"seed": s, "metrics": {**rec["metrics"], "bert_f1": v},
                        "per_example": {**rec["per_example"], "bert_f1": [v] * len(ids)}}
                       for s, v in enumerate(run_means)]
        rec["metrics"]["bert_f1"] = sum(run_means) / len(run_means)
    (d / "llama-wikidoc.json").write_text(json.dumps(rec))
    return d


def test_summary_prints_rows(tmp_path, capsys):
    run = write_run(tmp_path / "a", [0.4, 0.6])
    assert main(["summary", str(run)]) == 0
    out = capsys.readouterr().out
    assert "wikidoc" in out and "llama" in out and "0.5000" in out


def test_compare_single_runs_flag_a_drop_with_its_ci(tmp_path, capsys):
    a = write_run(tmp_path / "a", [0.5] * 20)
    b = write_run(tmp_path / "b", [0.4] * 20)  # -0.1, tolerance 0.02
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    # one run on each side, no spread: this run's bootstrap CI against the other run's mean
    assert "llama-wikidoc: regression" in out
    assert "bert_f1: 0.4000 vs 0.5000" in out and "[95% CI 0.4000, 0.4000]" in out and "no run spread" in out
    assert main(["compare", str(a), str(a)]) == 0
    assert "llama-wikidoc: pass" in capsys.readouterr().out


def test_compare_against_k_runs_uses_their_spread(tmp_path, capsys):
    a = write_run(tmp_path / "a", [0.5] * 20, run_means=[0.50, 0.51, 0.49, 0.505, 0.495])
    b = write_run(tmp_path / "b", [0.4] * 20)
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "llama-wikidoc: regression" in out and "K=5, R=1" in out and "band +/-" in out
    up = write_run(tmp_path / "up", [0.6] * 20)
    assert main(["compare", str(a), str(up)]) == 1  # a rise beyond the band fails as a change
    assert "llama-wikidoc: changed" in capsys.readouterr().out
    near = write_run(tmp_path / "near", [0.49] * 20)  # within the band and the minimum effect
    assert main(["compare", str(a), str(near)]) == 0


def test_bad_run_dir_is_a_one_line_error(tmp_path, capsys):
    assert main(["summary", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nope") in err and err.count("\n") == 1


def _history_with_runs(tmp_path: Path, values: list[float]) -> Path:
    from medqa_core.results.history import History

    db = tmp_path / "h.sqlite"
    h = History(db)
    for i, v in enumerate(values):
        d = write_run(tmp_path / f"run{i:02d}", [v] * 10)
        rec = json.loads((d / "llama-wikidoc.json").read_text())
        rec.update(profile="tiny", verdict={"status": "pass", "explain": "llama-wikidoc: pass", "checks": []},
                   provenance=PROVENANCE)
        h.add_run(f"2026110{i}-run", "tiny", [rec])
    return db


def test_compare_and_summary_accept_history_references(tmp_path, capsys):
    db = _history_with_runs(tmp_path, [0.5, 0.5, 0.4])
    assert main(["compare", "latest~1", "latest", "--history", str(db)]) == 1
    assert "bert_f1" in capsys.readouterr().out
    assert main(["compare", "20261100", "20261101", "--history", str(db)]) == 0
    assert main(["summary", "latest", "--history", str(db)]) == 0
    assert "0.4000" in capsys.readouterr().out
    assert main(["summary", "nope", "--history", str(db)]) == 2
    assert "'nope' not found" in capsys.readouterr().err


def test_history_and_trend_commands(tmp_path, capsys):
    db = _history_with_runs(tmp_path, [0.5] * 5 + [0.45] * 4)
    assert main(["history", "--history", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 9 and "20261108-run" in out
    assert main(["trend", "--history", str(db)]) == 1
    out = capsys.readouterr().out
    assert "llama-wikidoc: bert_f1: step down by -0.0500 (0.5000 -> 0.4500) starting at run 5 (20261105-run)" in out
    (tmp_path / "flat").mkdir()
    flat = _history_with_runs(tmp_path / "flat", [0.5] * 6)
    assert main(["trend", "--history", str(flat)]) == 0
    assert "no worsening shift in 6 stored run(s)" in capsys.readouterr().out


def test_report_writes_markdown_html_and_plots(tmp_path, capsys):
    db = _history_with_runs(tmp_path, [0.5] * 5 + [0.45] * 4)
    out = tmp_path / "rep"
    assert main(["report", "latest", "--history", str(db), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "| wikidoc | llama |" in md and "![scores vs baseline](report-bars.png)" in md
    assert "bert_f1: step down by -0.0500" in md and "starting at run 5" in md
    assert html.count("data:image/png;base64,") == 2 and "step down by -0.0500" in html
    for name in ("bars", "history"):
        assert (out / f"report-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a run directory works without any history, and the report lands beside its records
    run = tmp_path / "run00"
    assert main(["report", str(run), "--history", str(tmp_path / "none.sqlite")]) == 0
    assert "No history given." in (run / "report.md").read_text()
    assert "data:image/png;base64," in (run / "report.html").read_text()


CHROMIUM = next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


def _ink(png: Path) -> float:
    """Fraction of pixels that are not near-white."""
    import matplotlib.image as mpimg

    img = mpimg.imread(png)[..., :3]
    return float((img.min(axis=-1) < 0.9).mean())


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless chromium (Debian: apt-get install chromium)")
def test_report_renders_with_its_plots_in_headless_chromium(tmp_path):
    db = _history_with_runs(tmp_path, [0.5] * 5 + [0.45] * 4)
    out = tmp_path / "rep"
    assert main(["report", "latest", "--history", str(db), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    no_img = out / "no-images.html"
    no_img.write_text(re.sub(r"<img [^>]*>", "", html))

    def shot(page: Path) -> Path:
        png = page.with_suffix(".png")
        subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1200,2000", f"--screenshot={png}", page.as_uri()],
                       check=True, capture_output=True, timeout=120)
        return png

    with_plots, without = _ink(shot(out / "report.html")), _ink(shot(no_img))
    assert with_plots > 3 * without > 0  # the embedded PNGs decode and draw; the text alone is sparse


def test_params_lists_unavailable_families_with_their_reason(tmp_path, capsys):
    prof = tmp_path / "p.toml"
    prof.write_text('''
name = "p"
[models.llama]
tokenizer = "TOKENIZER"
tiny_config = { hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2 }
[models.phi]
unavailable = "no offline checkpoint for phi at this size"
[datasets.wikidoc]
file = "wikidoc.json"
question = "input"
answer = "output"
'''.replace("TOKENIZER", str(Path(__file__).resolve().parents[2] / "fixtures" / "tokenizer")))
    assert main(["params", "--profile", str(prof)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("llama") and "targets=" in out[1]
    assert out[2].split() == ["phi", "-", "-", "(no", "offline", "checkpoint", "for", "phi", "at", "this", "size)"]


def test_report_draws_history_only_for_cases_with_a_series(tmp_path):
    db = _history_with_runs(tmp_path, [0.5])  # one run: nothing to draw a line through
    out = tmp_path / "rep"
    assert main(["report", "latest", "--history", str(db), "--out", str(out)]) == 0
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 1
    assert not (out / "report-history.png").exists()


def test_a_profile_the_user_names_must_exist(tmp_path, capsys):
    db = _history_with_runs(tmp_path, [0.5] * 4)
    assert main(["trend", "--profile", "nosuch", "--history", str(db)]) == 2
    assert main(["report", "latest", "--profile", "nosuch", "--history", str(db), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("'nosuch'") == 2 and "known profiles" in err
