"""Report: the table aggregates runs correctly, the discussion states what the numbers show (and no
more), the HTML is self-contained. Synthetic run records; no training."""

from __future__ import annotations

import base64
import csv
import json
import re
import statistics

import pytest

from vaelab import report
from vaelab.config import RunConfig
from vaelab.report import COLUMNS, RunRecord, Setup, discussion, format_cell, results_rows

OBJECTIVE = {"pca": "squared-error", "autoencoder": "reconstruction", "vae": "paper"}


def record(model: str, dim: int, seed: int, *, valid: list[float], test_se: float, objective: str | None = None,
           test_loss: float = 100.0) -> RunRecord:
    objective = objective or OBJECTIVE[model]
    config = RunConfig(model=model, objective=objective, latent_dim=dim, seed=seed, epochs=len(valid))
    history = [{"epoch": e, "train_loss": v + 5, "valid_loss": v} for e, v in enumerate(valid, start=1 if
                                                                                       model != "pca" else 0)]
    test = {"loss": test_loss, "reconstruction": test_loss - 3, "regularizer": 3.0, "squared_error": test_se}
    return RunRecord(f"{model}-{objective}-z{dim}-s{seed}", config, history, {"epoch": 1, "test": test})


def cell(rows, model, objective, dim, key):
    row = next(r for r in rows if (r["model"], r["objective"], r["latent_dim"]) == (model, objective, dim))
    return row["cells"][key]


def test_rows_aggregate_seeds_with_mean_and_sample_std():
    records = [record("vae", 2, s, valid=[150 + s, 140 + 2 * s, 145], test_se=30 + s) for s in range(3)]
    rows = results_rows(records)
    assert len(rows) == 1 and rows[0]["seeds"] == [0, 1, 2]
    mv = rows[0]["cells"]["min_valid_loss"]
    assert mv["values"] == [140, 142, 144]  # the minimum over epochs, per seed
    assert mv["mean"] == pytest.approx(142) and mv["std"] == pytest.approx(statistics.stdev([140, 142, 144]))
    assert rows[0]["cells"]["best_epoch"]["values"] == [2, 2, 2]
    assert rows[0]["cells"]["test_squared_error"]["mean"] == pytest.approx(31)


def test_best_epoch_is_the_first_minimum():
    r = record("vae", 1, 0, valid=[150, 140, 140, 141], test_se=30)
    assert report.best_validation(r) == (140, 2)


def test_pca_has_no_nats_columns_but_a_squared_error():
    rows = results_rows([record("pca", 1, 0, valid=[55.0], test_se=56.0)])
    cells = rows[0]["cells"]
    assert cells["min_valid_loss"] is None and cells["test_loss"] is None and cells["best_epoch"] is None
    assert cells["test_squared_error"]["values"] == [56.0]


def test_format_cell():
    mean_col, epoch_col = COLUMNS[0], COLUMNS[1]
    assert format_cell(mean_col, None) == "—"
    assert format_cell(mean_col, {"mean": 1.234, "std": None, "values": [1.234]}) == "1.23"
    assert format_cell(mean_col, {"mean": 1.234, "std": 0.5, "values": [1, 2]}) == "1.23 ± 0.50"
    assert format_cell(epoch_col, {"mean": 9.5, "std": 0.7, "values": [9, 10]}) == "9–10"
    assert format_cell(epoch_col, {"mean": 10, "std": 0, "values": [10, 10]}) == "10"


def test_write_results_files_agree(tmp_path):
    records = [record(m, d, s, valid=[150.0 + d + s, 140.0 + s], test_se=40.0 - d + s)
               for m in ("pca", "autoencoder", "vae") for d in (1, 2) for s in (0, 1)]
    rows = results_rows(records)
    report.write_results(tmp_path, rows)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert [c["key"] for c in saved["columns"]] == [c.key for c in COLUMNS]
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6
    ae2 = next(r for r in table if r["model"] == "autoencoder" and r["latent_dim"] == "2")
    assert float(ae2["test_squared_error_mean"]) == cell(rows, "autoencoder", "reconstruction", 2,
                                                         "test_squared_error")["mean"]
    pca = next(r for r in table if r["model"] == "pca")
    assert pca["min_valid_loss_mean"] == ""
    md = (tmp_path / "results.md").read_text()
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + 6  # header, one line per row
    assert "| autoencoder | 2 | 140.50 ± 0.71 |" in md


def rows_for(se: dict[tuple[str, int], list[float]], epochs: int = 5) -> list[dict]:
    """Rows from per-seed test squared errors; valid losses fall every epoch (best = last)."""
    records = []
    for (model, dim), values in se.items():
        for s, v in enumerate(values):
            valid = [60.0] if model == "pca" else [200 - e - v for e in range(epochs)]
            records.append(record(model, dim, s, valid=valid, test_se=v))
    return results_rows(records)


def test_discussion_names_the_best_reconstruction_only_when_resolved():
    clear = rows_for({("pca", 2): [50, 50.2], ("autoencoder", 2): [30, 30.4], ("vae", 2): [35, 35.5]})
    text = " ".join(discussion(clear, epochs=5))
    assert "Autoencoder reconstructs best, ahead of VAE (paper)" in text
    assert re.search(r"autoencoder 30\.20 ± 0\.28, VAE \(paper\) 35\.25 ± 0\.35, PCA 50\.10 ± 0\.14", text)

    overlapping = rows_for({("autoencoder", 2): [30, 34], ("vae", 2): [31, 33]})
    text = " ".join(discussion(overlapping, epochs=5))
    assert "reconstructs best" not in text
    assert "about equally well" in text

    single = rows_for({("autoencoder", 2): [30], ("vae", 2): [31]})
    assert "single-seed run" in " ".join(discussion(single, epochs=5))


def test_discussion_reports_the_noise_cost_with_its_sign():
    rows = rows_for({("autoencoder", 2): [40, 40], ("vae", 2): [30, 30]})
    text = " ".join(discussion(rows, epochs=5))
    assert "VAE (paper) has 25.0% lower squared error than the autoencoder (30.00 vs 40.00)" in text


def test_discussion_latent_dims_and_training_budget():
    rows = rows_for({("autoencoder", 1): [50, 50], ("autoencoder", 2): [40, 40],
                     ("vae", 1): [45, 45], ("vae", 2): [47, 47]}, epochs=4)
    text = " ".join(discussion(rows, epochs=4))
    assert "test squared error: lower for autoencoder 50.00 → 40.00; higher for VAE (paper) 45.00 → 47.00" in text
    assert "In 4 of 4 rows" in text  # every run's best epoch is its last
    assert "still improving" not in " ".join(discussion(rows, epochs=10))  # best epoch 4 of 10: converged


def test_paper_number_sentence():
    rows = rows_for({("vae", 1): [40, 40], ("vae", 2): [30, 30]})
    text = discussion(rows, epochs=5)[0]
    best1 = cell(rows, "vae", "paper", 1, "min_valid_loss")
    assert f"{best1['mean']:.2f} ± 0.00 nats per image for latent dimension 1 (epoch 5)" in text


def make_setup(**overrides) -> Setup:
    values = dict(command="vaelab reproduce --quick --out r", version="0.1.0", epochs=5, seeds=(0, 1),
                  latent_dims=(1, 2), train_images=None, split_sizes=(50000, 10000, 10000), base=RunConfig(),
                  machine="test machine", runs_reused=0, runs_total=6, train_seconds_total=12.0,
                  phase_seconds={"training": 10.0}, wall_seconds=15.0, figure_seed=0, interpolation_classes=(0, 1))
    values.update(overrides)
    return Setup(**values)


def test_quick_subset_is_stated_in_the_setup():
    lines = " ".join(report.setup_lines(make_setup(train_images=10000)))
    assert "first 10000 of these 50000 training images" in lines
    assert "first" not in " ".join(report.setup_lines(make_setup()))


def test_html_is_self_contained(tmp_path):
    png = tmp_path / "figures" / "curves.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png, but bytes to embed")
    records = [record("vae", 2, s, valid=[150.0, 140.0 + s], test_se=30.0 + s) for s in (0, 1)]
    index = report.write_report(tmp_path, records, make_setup(), {"curves": png})
    page = index.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(e) for e in embedded] == [png.read_bytes()]
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    assert "<table>" in page and "140.50 ± 0.71" in page
    md = (tmp_path / "index.md").read_text()
    assert "](figures/curves.png)" in md and "140.50 ± 0.71" in md
