"""The on-demand benchmarks run end to end (on tiny fake data here) and print what they promise."""

import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAKE_TRAIN, FAKE_VALID

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_benchmark(name: str, args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *args])
    with torch.random.fork_rng(devices=[]):
        runpy.run_path(str(BENCHMARKS / name), run_name="__main__")


def test_train_speed_prints_both_times_the_ratio_and_the_matmul_share(fake_mnist, monkeypatch, capsys):
    run_benchmark("train_speed.py", ["--data-dir", str(fake_mnist), "--valid-size", str(FAKE_VALID)], monkeypatch)
    out = capsys.readouterr().out
    assert re.search(r"reference loop, batch 128: +[\d.]+ s/epoch", out), out
    assert re.search(r"vaelab trainer, batch 128: +[\d.]+ s/epoch .* -> [\d.]+x faster \(vaelab's default\)", out)
    assert f"vaelab trainer, batch 512: not timed (more than the {FAKE_TRAIN - FAKE_VALID} training images)" in out
    assert re.search(r"-> \d+% of torch\.matmul, \d+% of the faster matmul", out), out
    assert re.search(r"its matmuls alone at batch 128: [\d.]+ s/epoch, [\d.]+ GFLOP/s -> \d+% of the faster matmul, "
                     r"[\d.]+x the reference .*vaelab spends \d+% of its epoch in them", out), out
    assert re.search(r"^.+, \d+ cores; torch .+, \d+ threads;", out, re.M), out  # the CPU it measured
    assert re.search(r"linear kernel: (onednn|torch) \(probe: torch [\d.]+ ms, oneDNN ([\d.]+ ms|n/a)\)", out), out


def test_subnormal_flush_prints_both_kinds_in_turn_and_the_ratio(fake_mnist, monkeypatch, capsys):
    from vaelab import training

    flushing = training.subnormals_flushed
    run_benchmark("subnormal_flush.py", ["--data-dir", str(fake_mnist), "--valid-size", str(FAKE_VALID),
                                         "--epochs", "1", "--repeats", "1"], monkeypatch)
    out = capsys.readouterr().out
    line = r"^(flushed|not flushed) +[\d.]+ s; epochs [\d.]+-[\d.]+ s; last valid loss ([\d.]+)$"
    kinds = re.findall(line, out, re.M)
    assert [k for k, _ in kinds] == ["flushed", "not flushed"], out
    assert kinds[0][1] == kinds[1][1]  # the flush moves no loss
    assert re.search(r"not flushed / flushed \(median wall time\): [\d.]+x", out), out
    assert training.subnormals_flushed is flushing  # put back


def test_defaults_sweep_prints_one_row_per_cell(fake_mnist, monkeypatch, capsys):
    run_benchmark("defaults_sweep.py", ["--data-dir", str(fake_mnist), "--valid-size", str(FAKE_VALID),
                                        "--batch-size", "32,64", "--lr", "1e-3", "--hidden", "16;8",
                                        "--epochs", "1", "--seeds", "0,1"], monkeypatch)
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("16", "32", "0.001"), ("16", "64", "0.001"),
                                                  ("8", "32", "0.001"), ("8", "64", "0.001")]
    for row in rows:
        assert row[3] == "constant" and 0 < float(row[4]) < 1000 and float(row[5]) >= 0  # mean loss, sd over seeds
        assert len(row) == 9 and abs(float(row[4]) - sum(map(float, row[7:])) / 2) <= 0.01  # the two seeds' mean


def test_likelihood_study_prints_every_variant_with_the_chosen_one(fake_mnist, monkeypatch, capsys, tmp_path):
    out = tmp_path / "study"
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/likelihood_study.py` has it (cpu_model)
    run_benchmark("likelihood_study.py", ["--data-dir", str(fake_mnist), "--valid-size", str(FAKE_VALID),
                                          "--quick", "--epochs", "1", "--hidden", "16", "--batch-size", "64",
                                          "--iwae-k", "8",
                                          "--nll-images", "30", "--out", str(out)], monkeypatch)
    printed = capsys.readouterr().out
    assert re.search(r"^.+, \d+ cores; torch ", printed, re.M), printed  # the CPU it ran on
    assert "recipe (z1-best at latent 1, z2-best at latent 2) = {'model': 'vae', 'objective': 'iwae'" in printed
    table = [line for line in printed.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    names = ["recipe", "- iwae", "- prior", "- warmup", "- cosine", "baseline"]  # 1 epoch: no epochs lever
    assert [line.split(" | ")[1].split(" (")[0] for line in table] == names * 2
    assert sum("(chosen on validation)" in line for line in table) == 2  # one per latent dimension
    for line in table:
        assert re.search(r"(\| -?[\d.]+ ± [\d.]+ ){5}\| \d+ \| 1 \|$", line), line  # ... train s, seeds
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["rows"]) == 12 and {r["iwae_k"] for r in saved["rows"]} == {8}
    # IWAE bounds the exact NLL of its own images (a 1-epoch model's gap is far above IWAE_8's noise)
    assert all(r["test_iwae"] > r["test_exact_nll_iwae_images"] for r in saved["rows"])
    recipes = {r["latent_dim"]: r["config"] for r in saved["rows"] if r["variant"] == "recipe"}
    assert {d: (c["preset"], c["objective"]) for d, c in recipes.items()} == {1: ("z1-best", "iwae"),
                                                                             2: ("z2-best", "iwae")}
    assert (out / "results.md").read_text().startswith("| latent | variant |")


def test_likelihood_study_trains_in_workers_reports_a_failed_run_and_reuses_the_others(mnist_root, monkeypatch,
                                                                                        capsys, tmp_path):
    """(Real MNIST: a worker is a fresh interpreter, which does not trust the fake files as this one does.)"""
    out = tmp_path / "study"
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    common = ["--data-dir", str(mnist_root), "--quick", "--epochs", "1",
              "--batch-size", "64", "--iwae-k", "8", "--nll-images", "30", "--latent-dims", "1", "--out", str(out)]
    # a baseline made with other widths first: the study must not resume it as its own
    run_benchmark("likelihood_study.py", [*common, "--hidden", "8", "--variants", "baseline"], monkeypatch)
    capsys.readouterr()
    with pytest.raises(SystemExit, match="1 of 3 runs failed"):
        run_benchmark("likelihood_study.py", [*common, "--hidden", "16", "--variants", "recipe,- iwae,baseline",
                                              "--workers", "2"], monkeypatch)
    printed = capsys.readouterr()
    assert "2 worker(s)" in printed.out
    assert re.search(r"baseline-z1-s0: failed: ReproduceError: .*hidden", printed.out), printed.out
    assert "failed: baseline-z1-s0" in printed.err
    table = [line.split(" | ")[1].split(" (")[0] for line in printed.out.splitlines() if line.startswith("| 1 ")]
    assert table == ["recipe", "- iwae"]
    first = json.loads((out / "results.json").read_text())["rows"]
    timing = (out / "runs" / "recipe-z1-s0" / "timing.jsonl").read_text()
    # in this process now, the recipe alone: reused (not trained again), and the table still has "- iwae", scored
    # before with these settings, and not the baseline made with other widths
    run_benchmark("likelihood_study.py", [*common, "--hidden", "16", "--variants", "recipe"], monkeypatch)
    assert (out / "runs" / "recipe-z1-s0" / "timing.jsonl").read_text() == timing
    again = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["variant"], r["test_exact_nll"], r["test_iwae"]) for r in again] == \
        [(r["variant"], r["test_exact_nll"], r["test_iwae"]) for r in first]
    # a later part of the study: seed 1 of the recipe alone; seed 0's runs are listed beside it, not trained again
    capsys.readouterr()
    run_benchmark("likelihood_study.py", [*common, "--hidden", "16", "--variants", "recipe", "--seeds", "1-1"],
                  monkeypatch)
    assert (out / "runs" / "recipe-z1-s0" / "timing.jsonl").read_text() == timing
    assert not (out / "runs" / "- iwae-z1-s1").exists() and not (out / "runs" / "no-iwae-z1-s1").exists()
    parts = json.loads((out / "results.json").read_text())["rows"]
    assert sorted((r["variant"], r["seed"]) for r in parts) == [("- iwae", 0), ("recipe", 0), ("recipe", 1)]
    printed = capsys.readouterr().out
    recipe_row = next(line for line in printed.splitlines() if line.startswith("| 1 | recipe"))
    assert "chosen on validation over the seeds all variants have (latent 1: seeds 0)" in printed  # "- iwae": seed 0
    seeds_nll = [r["test_exact_nll"] for r in parts if r["variant"] == "recipe"]
    assert f"| {sum(seeds_nll) / 2:.2f} ± " in recipe_row, recipe_row  # the mean of both seeds
    assert recipe_row.endswith(" | 2 |")  # seeds

    # another session's part, elsewhere: the rows of this one's results.json join its table where the settings
    # are its own, and not where they are not (other widths)
    # (its recipe rows under another preset name, as a latent-1 recipe was labelled z2-best once: a name, not a
    # setting, so they join)
    relabelled = json.loads((out / "results.json").read_text())
    for r in relabelled["rows"]:
        r["config"]["preset"] = "z2-best" if r["config"]["preset"] else None
    (tmp_path / "relabelled.json").write_text(json.dumps(relabelled))
    elsewhere = [*common[:-2], "--variants", "- prior", "--seeds", "1-1", "--include",
                 str(tmp_path / "relabelled.json")]
    run_benchmark("likelihood_study.py", [*elsewhere, "--hidden", "16", "--out", str(tmp_path / "elsewhere")],
                  monkeypatch)
    joined = json.loads((tmp_path / "elsewhere" / "results.json").read_text())["rows"]
    assert sorted((r["variant"], r["seed"]) for r in joined) == [("- iwae", 0), ("- prior", 1), ("recipe", 0),
                                                                  ("recipe", 1)]
    assert {r["test_exact_nll"] for r in joined} >= set(seeds_nll) and all(r["cpu"] for r in joined)
    printed = capsys.readouterr().out
    assert next(line for line in printed.splitlines() if line.startswith("| 1 | recipe")).endswith(" | 2 |")
    assert f"--include {tmp_path / 'relabelled.json'}: 3 of 3 rows join the table" in printed
    # chosen on validation over the seeds every variant has, and said so: here none ("- iwae" has seed 0 alone,
    # "- prior" seed 1), so no variant is chosen on means over different seeds
    assert "chosen on validation over the seeds all variants have (latent 1: no seed shared, none chosen)" in printed
    assert "(chosen on validation)" not in printed
    run_benchmark("likelihood_study.py", [*elsewhere, "--hidden", "8", "--out", str(tmp_path / "narrow")], monkeypatch)
    alone = json.loads((tmp_path / "narrow" / "results.json").read_text())["rows"]
    assert [(r["variant"], r["seed"]) for r in alone] == [("- prior", 1)]
    assert "0 of 3 rows join the table (left out: 3 trained with other settings)" in capsys.readouterr().out
    # scored with another k: left out, and said so
    run_benchmark("likelihood_study.py", [*elsewhere[:-4], "--iwae-k", "4", *elsewhere[-4:], "--hidden", "16",
                                          "--out", str(tmp_path / "elsewhere")], monkeypatch)
    assert [(r["variant"], r["iwae_k"]) for r in json.loads((tmp_path / "elsewhere" / "results.json").read_text())
            ["rows"]] == [("- prior", 4)]
    assert "left out: 3 scored with other settings" in capsys.readouterr().out

    # OUT's own run takes the place of the same run in an included file; rows of an older format are left out
    doctored = json.loads((out / "results.json").read_text())
    for r in doctored["rows"]:
        r["test_exact_nll"] = 999.0
        del r["config"]["skip_bad"]  # as if written before RunConfig had it: its default is what it was
    doctored["rows"].append({"latent_dim": 1, "variant": "baseline", "seed": 0, "test_exact_nll": 1.0})
    (tmp_path / "doctored.json").write_text(json.dumps(doctored))
    run_benchmark("likelihood_study.py", [*common, "--hidden", "16", "--variants", "recipe", "--include",
                                          str(tmp_path / "doctored.json")], monkeypatch)
    kept = json.loads((out / "results.json").read_text())["rows"]
    assert sorted(r["test_exact_nll"] for r in kept) == sorted(r["test_exact_nll"] for r in parts)
    # (a config without a field RunConfig has since gained still matches)
    assert "3 of 4 rows join the table (left out: 1 no valid_exact_nll, test_exact_nll_iwae_images, test_iwae... " \
        "(an older format))" in \
        capsys.readouterr().out
    # a run that fails here (OUT's baseline was made with other widths) keeps the row an included file has of it
    iwae_row = next(r for r in parts if r["variant"] == "- iwae")
    baseline_row = {**iwae_row, "variant": "baseline", "test_exact_nll": 555.0,
                    "config": {**iwae_row["config"], "prior": "standard", "warmup": 0, "lr_schedule": "constant"}}
    (tmp_path / "baseline.json").write_text(json.dumps({"rows": [baseline_row]}))
    with pytest.raises(SystemExit, match="1 of 1 runs failed"):
        run_benchmark("likelihood_study.py", [*common, "--hidden", "16", "--variants", "baseline", "--include",
                                              str(tmp_path / "baseline.json")], monkeypatch)
    assert "baseline-z1-s0: failed: ReproduceError" in capsys.readouterr().out
    assert [r["test_exact_nll"] for r in json.loads((out / "results.json").read_text())["rows"]
            if r["variant"] == "baseline"] == [555.0]
    for bad in (tmp_path / "missing.json", tmp_path / "doctored.json.not"):
        if bad.suffix == ".not":
            bad.write_text("{not json")
        with pytest.raises(SystemExit) as stopped:
            run_benchmark("likelihood_study.py", [*common, "--include", str(bad)], monkeypatch)
        assert stopped.value.code == 2 and "not a results.json of this study" in capsys.readouterr().err


@pytest.mark.parametrize("text, seeds", [("3", [0, 1, 2]), ("1-2", [1, 2]), ("2-2", [2])])
def test_likelihood_study_seeds_are_a_count_or_a_range(text, seeds, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    study = runpy.run_path(str(BENCHMARKS / "likelihood_study.py"))
    assert list(study["parse_seeds"](text)) == seeds
    for bad in ("0", "2-1", "x", "-1", "1-"):
        with pytest.raises(Exception, match="seeds|expected"):
            study["parse_seeds"](bad)


@pytest.mark.parametrize("objective", [[], ["--objective", "iwae", "--k", "3"]], ids=["default", "iwae-k3"])
def test_step_parts_prints_the_five_parts_of_a_step(fake_mnist, monkeypatch, capsys, objective):
    run_benchmark("step_parts.py", ["--data-dir", str(fake_mnist), "--valid-size", str(FAKE_VALID), "--batch-size",
                                    "32", "--steps", "2", "--rounds", "1", *objective], monkeypatch)
    out = capsys.readouterr().out
    said = "iwae \\(k=3\\)" if objective else "paper"
    assert re.search(rf"^.+, \d+ cores, torch .*kernel (torch|onednn); objective {said}; batch 32", out, re.M), out
    parts = re.findall(r"^  (\d)\. .* [\d.]+ s/epoch +([\d.]+) ms/step", out, re.M)
    assert [p[0] for p in parts] == ["1", "2", "3", "4", "5"], out
    assert all(float(ms) > 0 for _, ms in parts)  # (s/epoch of 7 steps can print 0.00 on a fast CPU)


def test_step_parts_asks_for_a_steps_products_in_its_order(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    study = runpy.run_path(str(BENCHMARKS / "step_parts.py"))
    from vaelab.config import RunConfig
    from vaelab.models import init_model

    model = init_model(RunConfig(hidden=(16, 8), latent_dim=2))
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    ordered = study["products"](model, "torch", 4)
    assert len(ordered) == 3 * len(layers) - 1  # forward, weight and input gradients; no input gradient for data
    shapes = [tuple((a @ b).shape) for _, a, b in ordered]
    assert shapes[:len(layers)] == [(4, m.out_features) for m in layers]  # every layer forward, in order
    assert shapes[len(layers)] == tuple(layers[-1].weight.shape)  # then backward from the last layer


@pytest.mark.parametrize("preset", [None, "z2-best"])
def test_step_profile_prints_each_group_of_operators_for_the_default_vae_or_a_preset(fake_mnist, monkeypatch, capsys,
                                                                                     preset):
    args = ["--data-dir", str(fake_mnist), "--valid-size", str(FAKE_VALID), "--epochs", "1", "--hidden", "16,8"]
    run_benchmark("step_profile.py", [*args, *(["--preset", preset, "--batch-size", "64"] if preset else [])],
                  monkeypatch)
    out = capsys.readouterr().out
    said = "z2-best: latent 2, objective iwae (k=5), prior vamp:100, batch 64" if preset else \
        "default VAE: latent 2, objective paper, prior standard, batch 128"
    assert said in out and "hidden 16,8" in out, out
    shares = [float(s) for s in re.findall(r"^  \S.*? +[\d.]+ s +([\d.]+)%$", out, re.M)]
    assert "matmuls" in out and len(shares) >= 3 and sum(shares) == pytest.approx(100, abs=0.5), out


def test_step_profile_counts_the_matmuls_flops_when_asked(fake_mnist, monkeypatch, capsys):
    monkeypatch.setenv("VAELAB_LINEAR", "torch")  # torch's mm / addmm carry FLOP counts; oneDNN's op does not
    run_benchmark("step_profile.py", ["--data-dir", str(fake_mnist), "--valid-size", str(FAKE_VALID), "--epochs", "1",
                                      "--hidden", "16,8", "--flops"], monkeypatch)
    match = re.search(r"matmuls with a FLOP count \((\d+)% of the matmuls' time\): ([\d.]+) GFLOP at ([\d.]+) GFLOP/s",
                      capsys.readouterr().out)
    assert match and int(match[1]) >= 50 and float(match[3]) > 0, match
