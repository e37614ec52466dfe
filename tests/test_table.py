"""The results table: rows aggregate seeds correctly, columns are found by key, the three files agree."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from records import cell, record
from vaelab import table
from vaelab.table import COLUMNS, format_cell, results_rows


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
    assert table.best_validation(r) == (140, 2)


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
    table.write_results(tmp_path, rows)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert [c["key"] for c in saved["columns"]] == [c.key for c in COLUMNS]
    with open(tmp_path / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 6
    ae2 = next(r for r in csv_rows if r["model"] == "autoencoder" and r["latent_dim"] == "2")
    assert float(ae2["test_squared_error_mean"]) == cell(rows, "autoencoder", "reconstruction", 2,
                                                         "test_squared_error")["mean"]
    pca = next(r for r in csv_rows if r["model"] == "pca")
    assert pca["min_valid_loss_mean"] == ""
    md = (tmp_path / "results.md").read_text()
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + 6  # header, one line per row
    assert "| autoencoder | 2 | 140.50 ± 0.71 |" in md


def test_columns_are_found_by_key():
    assert table.column("best_epoch").integer and table.column("exact_nll").group == "likelihood"
    with pytest.raises(KeyError, match="no column 'nope'"):
        table.column("nope")
    assert len({c.key for c in COLUMNS}) == len(COLUMNS)  # keys are unique
