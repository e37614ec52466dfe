"""Synthetic run records for the table, discussion and report tests (no training)."""

from __future__ import annotations

from vaelab.config import RunConfig
from vaelab.table import RunRecord, results_rows

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


def rows_for(se: dict[tuple[str, int], list[float]], epochs: int = 5) -> list[dict]:
    """Rows from per-seed test squared errors; valid losses fall every epoch (best = last)."""
    records = []
    for (model, dim), values in se.items():
        for s, v in enumerate(values):
            valid = [60.0] if model == "pca" else [200 - e - v for e in range(epochs)]
            records.append(record(model, dim, s, valid=valid, test_se=v))
    return results_rows(records)
