"""`vaelab reproduce`: run bookkeeping (reuse, resume, force, mismatches) on fake data, then one
`--quick` reproduce on real MNIST shared by the tests below it: every file is produced, each figure
is a real image, the table equals a re-evaluation of the saved checkpoints, the same command (stopped by
Ctrl-C on the way) gives the same rows, and a second invocation reuses the finished runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import typer.main

from conftest import FAKE_VALID
from test_figures import png_stats
from vaelab import cli
from vaelab.config import RunConfig
from vaelab.data import load_data
from vaelab.evaluate import evaluate_run
from vaelab.figures import FIGURES
from vaelab.reproduce import (
    DEFAULT_EPOCHS,
    DEFAULT_SEEDS,
    EXPERIMENT,
    QUICK_EPOCHS,
    QUICK_TRAIN_IMAGES,
    Progress,
    ReproduceError,
    RunSpec,
    ensure_run,
    make_settings,
    parse_latent_dims,
    plan,
    reproduce,
)
from vaelab.runfiles import load_config, read_metrics
from vaelab.training import train

# --- settings and plan ---------------------------------------------------------------------------


def test_settings_defaults_quick_and_overrides():
    full = make_settings()
    assert (full.epochs, full.seeds, full.latent_dims) == (DEFAULT_EPOCHS, tuple(range(DEFAULT_SEEDS)), (1, 2))
    assert full.train_images is None
    quick = make_settings(quick=True)
    assert quick.epochs == QUICK_EPOCHS and quick.train_images == QUICK_TRAIN_IMAGES and len(quick.seeds) == 1
    assert make_settings(quick=True, epochs=7, seeds=2).seeds == (0, 1)
    assert quick.command(Path("r")) == "vaelab reproduce --quick --out r"
    assert make_settings(epochs=200, seeds=5).command(Path("r")) == "vaelab reproduce --epochs 200 --seeds 5 --out r"
    for bad in (dict(epochs=0), dict(seeds=0), dict(latent_dims=(0,))):
        with pytest.raises(ReproduceError):
            make_settings(**bad)


def test_parse_latent_dims():
    assert parse_latent_dims("1,2") == (1, 2) and parse_latent_dims("3") == (3,)
    for bad in ("", "a", "1,1", "0,2", "1,,2", "1_0", "+1"):
        with pytest.raises(ValueError, match="--latent-dims takes comma-separated distinct whole numbers"):
            parse_latent_dims(bad)


def test_help_states_the_defaults_the_code_uses():
    """The CLI help repeats the default budget; it must not drift from the constants."""
    command = typer.main.get_command(cli.app).commands["reproduce"]
    help_text = " ".join(p.help or "" for p in command.params)
    assert f"[default: {DEFAULT_EPOCHS}; quick: {QUICK_EPOCHS}]" in help_text
    assert f"[default: {DEFAULT_SEEDS}; quick: 1]" in help_text
    assert f"the first {QUICK_TRAIN_IMAGES} training images" in help_text


def test_plan_covers_every_model_dim_and_seed_with_one_setup():
    specs = plan(make_settings(epochs=4, seeds=2))
    assert len(specs) == len(EXPERIMENT) * 2 * 2
    assert len({s.name for s in specs}) == len(specs)
    for s in specs:
        assert s.config.epochs == (0 if s.config.model == "pca" else 4)
        rest = {k: v for k, v in s.config.to_dict().items()
                if k not in ("model", "objective", "latent_dim", "seed", "epochs")}
        assert rest == {k: v for k, v in RunConfig().to_dict().items() if k in rest}  # one shared setup
    assert [s.config.seed for s in specs[:8]] == [0] * 8  # seed-major: all models of seed 0 first


def test_plan_adds_the_recipe_for_each_latent_dim_that_has_one():
    from vaelab.config import PRESETS

    specs = plan(make_settings(epochs=4, seeds=2, latent_dims=(1, 2, 3), recipe=True))
    recipes = [s for s in specs if s.config.preset]
    assert [(s.name, s.config.seed) for s in recipes] == [("z1-best-s0", 0), ("z2-best-s0", 0),
                                                         ("z1-best-s1", 1), ("z2-best-s1", 1)]  # no z3-best
    for s in recipes:  # the preset's own settings, its 300 epochs included
        assert {k: getattr(s.config, k) for k in PRESETS[s.config.preset]} == PRESETS[s.config.preset]
    assert len(specs) == len(EXPERIMENT) * 3 * 2 + 4
    quick = [s.config for s in plan(make_settings(quick=True, recipe=True)) if s.config.preset]
    # --quick tries the pipeline: its budget, and the warm-up the same share of it (10 of 300 epochs: none)
    assert {(c.epochs, c.warmup) for c in quick} == {(QUICK_EPOCHS, round(10 * QUICK_EPOCHS / 300))}
    with pytest.raises(ReproduceError, match="no recipe for latent dimension"):
        make_settings(latent_dims=(3,), recipe=True)  # --recipe that would add nothing is refused
    assert make_settings(recipe=True).command(Path("r")).endswith("--recipe --out r")
    assert not any(s.config.preset for s in plan(make_settings()))  # off by default


# --- runs: reuse, resume, force, mismatch (fake data) ----------------------------------------------

def tiny_spec(epochs: int, **overrides) -> RunSpec:
    values = dict(model="vae", objective="elbo", latent_dim=2, hidden=(16,), epochs=epochs, batch_size=64, lr=1e-3,
                  valid_size=FAKE_VALID)
    values.update(overrides)
    return RunSpec(RunConfig(**values), None)


def test_ensure_run_trains_reuses_resumes_and_forces(fake_mnist, tmp_path):
    data = load_data(tiny_spec(1).config, fake_mnist)
    run = tmp_path / "run"
    assert ensure_run(tiny_spec(2), run, data=data) == "trained"
    timing = (run / "timing.jsonl").read_text()
    assert ensure_run(tiny_spec(2), run, data=data) == "reused"
    assert (run / "timing.jsonl").read_text() == timing  # nothing retrained
    assert ensure_run(tiny_spec(3), run, data=data) == "resumed"
    assert [h["epoch"] for h in read_metrics(run)] == [1, 2, 3]
    straight = tmp_path / "straight"
    ensure_run(tiny_spec(3), straight, data=data)
    assert read_metrics(straight) == read_metrics(run)  # resuming gives the same run as training straight
    (run / "marker").write_text("from before")
    assert ensure_run(tiny_spec(3), run, data=data, force=True) == "trained"
    assert not (run / "marker").exists()  # the old directory was replaced
    assert read_metrics(run) == read_metrics(straight)


def test_a_run_made_with_other_settings_is_refused_not_reused(fake_mnist, tmp_path):
    data = load_data(tiny_spec(1).config, fake_mnist)
    run = tmp_path / "run"
    ensure_run(tiny_spec(2), run, data=data)
    with pytest.raises(ReproduceError, match=r"lr 0\.001 \(asked 0\.01\).*--force"):
        ensure_run(tiny_spec(2, lr=0.01), run, data=data)
    with pytest.raises(ReproduceError, match="2 epochs done"):
        ensure_run(tiny_spec(1), run, data=data)
    with pytest.raises(ReproduceError, match="training images all"):
        ensure_run(RunSpec(tiny_spec(2).config, 150), run, data=data)


def test_a_quick_run_trains_on_the_first_images_and_records_it(fake_mnist, tmp_path):
    data = load_data(tiny_spec(1).config, fake_mnist)
    ensure_run(RunSpec(tiny_spec(1).config, 64), tmp_path / "a", data=data)
    assert json.loads((tmp_path / "a" / "reproduce.json").read_text()) == {"train_images": 64}
    # the same run trained by hand on the first 64 images is identical
    subset = type(data)(data.train[:64], data.valid, data.test, data.binarize, data.splits)
    train(tiny_spec(1).config, tmp_path / "b", data=subset, progress=False, log=lambda m: None)
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")


def test_progress_counts_the_trainers_epochs(fake_mnist, tmp_path, capsys):
    data = load_data(tiny_spec(1).config, fake_mnist)
    bar = Progress(total=4, n_runs=2, enabled=True)
    bar.start(0, "vae-elbo-z2-s0")
    ensure_run(tiny_spec(3), tmp_path / "run", data=data, log=bar.log)
    bar.start(1, "pca")
    ensure_run(RunSpec(RunConfig(model="pca", objective="squared-error", epochs=0, valid_size=FAKE_VALID), None),
               tmp_path / "pca", data=data, log=bar.log)
    assert bar.bar.n == 4  # three epochs and one PCA fit
    bar.close()
    err = capsys.readouterr().err
    assert "run 1/2 vae-elbo-z2-s0" in err and "epoch 3/3" in err and "4/4 epochs" in err


def test_progress_is_silent_when_not_a_terminal(capsys):
    bar = Progress(total=2, n_runs=1)  # enabled=None: only when stderr is a terminal (here it is captured)
    bar.start(0, "x")
    bar.log("epoch 1/2  train loss 1.00  valid loss 1.00 nats/image  (0.1 s)")
    bar.close()
    assert capsys.readouterr().err == ""


# --- one real --quick reproduce, shared ---------------------------------------------------------

EXPECTED_SIZES = {"structure": (1300, 480), "curves": (1200, 600), "reconstructions": (600, 398),
                  "samples": (1280, 680), "latent": (920, 1370), "manifold": (1120, 700),
                  "interpolation": (642, 423)}


@pytest.fixture(scope="module")
def quick(mnist_root, tmp_path_factory) -> dict:
    """`vaelab reproduce --quick` run as a user runs it (a subprocess, output not a terminal)."""
    out = tmp_path_factory.mktemp("reproduce") / "report"
    env = {**os.environ, "VAELAB_DATA": str(mnist_root)}
    done = subprocess.run([str(Path(sys.executable).parent / "vaelab"), "reproduce", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    return {"out": out, "done": done, "root": mnist_root}


def test_quick_writes_every_file_and_a_line_per_run(quick):
    done, out = quick["done"], quick["out"]
    assert done.returncode == 0, done.stderr
    # stderr is not a terminal: no progress bar, but one line per finished run, for a redirected log
    assert "\r" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("run ")]
    names = [s.name for s in plan(make_settings(quick=True))]
    # (the default on 2+ cores trains in worker processes: the lines come in the order the runs finish)
    assert sorted(line.split(":")[0] for line in lines) == sorted(f"run {i + 1}/{len(names)} {n}"
                                                                  for i, n in enumerate(names))
    assert all(re.search(r": trained in [\d.]+ s, best valid loss [\d.]+$", line) for line in lines)
    assert sum(line.startswith("evaluating ") for line in done.stderr.splitlines()) == len(names)
    assert "index.html" in done.stdout
    for name in ("results.md", "results.csv", "results.json", "index.md", "index.html"):
        assert (out / name).stat().st_size > 0, name
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == sorted(s.name for s in plan(make_settings(quick=True)))


def test_every_figure_is_a_real_image(quick):
    for name in FIGURES:
        stats = png_stats(quick["out"] / "figures" / f"{name}.png")
        assert stats["size"] == EXPECTED_SIZES[name], name
        assert stats["std"] > 0.1, name  # not a blank canvas
    assert png_stats(quick["out"] / "figures" / "latent.png")["colored"] > 0.01  # 10k coloured test codes


def test_table_equals_a_reevaluation_of_the_saved_runs(quick):
    out = quick["out"]
    results = json.loads((out / "results.json").read_text())
    data = load_data(RunConfig(), quick["root"])
    assert len(results["rows"]) == len(EXPERIMENT) * 2
    for row in results["rows"]:
        for i, name in enumerate(row["runs"]):
            fresh = evaluate_run(out / "runs" / name, data=data)
            cells = row["cells"]
            assert cells["test_squared_error"]["values"][i] == pytest.approx(fresh["test"]["squared_error"], rel=1e-9)
            if row["model"] == "pca":
                assert cells["test_loss"] is None
                continue
            for key in ("loss", "reconstruction", "regularizer"):
                assert cells[f"test_{key}"]["values"][i] == pytest.approx(fresh["test"][key], rel=1e-9), key
            # the minimum of metrics.jsonl is the validation loss of the saved best weights
            assert cells["min_valid_loss"]["values"][i] == pytest.approx(fresh["valid"]["loss"], rel=1e-9)
            assert cells["best_epoch"]["values"][i] == fresh["epoch"]


def test_ctrl_c_stops_the_workers_and_the_same_command_ends_with_the_uninterrupted_numbers(quick, tmp_path):
    """Ctrl-C reaches the whole process group, as in a terminal: one line naming the command that continues,
    exit code 130, no worker left behind; that command then finishes the runs, and its rows are the
    uninterrupted command's to the last bit (the same seeds give the same numbers; a run resumes exactly)."""
    out = tmp_path / "report"
    command = [str(Path(sys.executable).parent / "vaelab"), "reproduce", "--quick", "--workers", "2",
               "--latent-dims", "2", "--out", str(out)]
    env = {**os.environ, "VAELAB_DATA": str(quick["root"])}

    def default_ctrl_c():  # (a background job may inherit SIGINT ignored)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.setpgrp()

    started = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=default_ctrl_c)
    deadline = time.monotonic() + 120
    while not list(out.glob("runs/*/checkpoints/*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.2)  # a worker is training
    os.killpg(started.pid, signal.SIGINT)
    _, err = started.communicate(timeout=60)
    assert started.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "vaelab: interrupted while training in worker processes (each run keeps its last checkpoint); to continue "
        f"every run, give the same command again: vaelab reproduce --quick --latent-dims 2 --out {out}")
    assert "Traceback" not in err and "leaked" not in err
    deadline = time.monotonic() + 10  # the workers (and multiprocessing's resource tracker) end with it
    with pytest.raises(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(started.pid, 0)
            time.sleep(0.1)
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    # (both ran worker processes with the same threads each: the threads per run move the last bits on some CPUs)
    rows = json.loads((out / "results.json").read_text())["rows"]
    uninterrupted = [r for r in json.loads((quick["out"] / "results.json").read_text())["rows"] if r["latent_dim"] == 2]
    assert len(rows) == len(EXPERIMENT) and rows == uninterrupted


def test_recipe_runs_join_the_tables_next_to_the_published_numbers(quick, tmp_path):
    out = tmp_path / "report"
    shutil.copytree(quick["out"], out)
    before = {p.name: p.read_bytes() for p in (out / "figures").glob("*.png")}
    reproduce(out, settings=make_settings(quick=True, recipe=True), data_dir=quick["root"])
    for name in ("z1-best-s0", "z2-best-s0"):
        config = load_config(out / "runs" / name)
        assert (config.preset, config.objective, config.epochs) == (name[:7], "iwae", QUICK_EPOCHS)
    rows = json.loads((out / "results.json").read_text())["rows"]
    recipe = {r["latent_dim"]: r for r in rows if r["preset"]}
    assert sorted(recipe) == [1, 2] and recipe[2]["label"] == "VAE (z2-best recipe)"
    assert recipe[2]["cells"]["exact_nll"]["values"][0] > 0
    index = (out / "index.md").read_text()
    assert "8 of 10 runs were reused" in index
    nll = format(recipe[2]["cells"]["exact_nll"]["mean"], ".2f")
    assert f"| vaelab, VAE (z2-best recipe), {QUICK_EPOCHS} epochs, 1 seed | exact (quadrature) | {nll} |" in index
    assert "| Davidson et al. 2018, hyperspherical S-VAE | IS-500 | 132.50 ± 0.73 |" in index
    # the figures and the explorer stay the paper's four models
    assert {p.name: p.read_bytes() for p in (out / "figures").glob("*.png")} == before
    page = (out / "explorer.html").read_text()
    assert "best-s0" not in page and "vae-elbo-z2-s0" in page


def test_a_second_invocation_reuses_finished_runs(quick):
    out = quick["out"]
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/model.safetensors")}
    table = (out / "results.csv").read_text()
    reproduce(out, settings=make_settings(quick=True), data_dir=quick["root"])
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/model.safetensors")} == before
    assert (out / "results.csv").read_text() == table
    assert "8 of 8 runs were reused" in (out / "index.md").read_text()


def test_a_reused_run_keeps_its_evaluation_unless_it_was_asked_another_question(quick):
    out = quick["out"]
    reproduce(out, settings=make_settings(quick=True), data_dir=quick["root"])  # (an earlier test re-scored some)
    evaluations = sorted((out / "runs").glob("*/evaluation.json"))
    before = {p: p.read_bytes() for p in evaluations}
    table = (out / "results.csv").read_text()
    vae = out / "runs" / "vae-elbo-z2-s0"
    evaluate_run(vae, data_dir=quick["root"], nll="iwae", k=3)  # another question: its request changes
    assert json.loads((vae / "evaluation.json").read_text())["request"]["k"] == 3
    stamps = {p: p.stat().st_mtime_ns for p in evaluations if p.parent != vae}
    reproduce(out, settings=make_settings(quick=True), data_dir=quick["root"])
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # reused, not rewritten
    assert {p: p.read_bytes() for p in evaluations} == before  # the asked-again run re-scored to the same
    assert (out / "results.csv").read_text() == table


def test_other_settings_into_the_same_out_are_refused(quick, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["reproduce", "--out", str(quick["out"]), "--data-dir", str(quick["root"])])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "training images 10000 (asked all)" in err and "--force" in err and "Traceback" not in err


def test_report_embeds_every_figure_and_states_the_setup(quick):
    page = (quick["out"] / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    md = (quick["out"] / "index.md").read_text()
    for text in ("vaelab reproduce --quick", f"first {QUICK_TRAIN_IMAGES} of these 50000 training images",
                 "torch " + torch.__version__, "Wall time of this command", "## Discussion"):
        assert text in md, text
    for name in FIGURES:
        assert f"](figures/{name}.png)" in md


def test_the_report_links_an_explorer_of_the_latent_2_runs(quick):
    page = (quick["out"] / "explorer.html").read_text()
    for label in ("autoencoder, z=2, seed 0", "VAE (paper), z=2, seed 0", "VAE (ELBO), z=2, seed 0"):
        assert label in page, label
    assert "pca-" not in page and "window.vaelabDecode" in page
    assert "[explorer.html](explorer.html)" in (quick["out"] / "index.md").read_text()
def test_reproduce_on_your_own_colour_images_with_conv_and_continuous_bernoulli(tmp_path, monkeypatch, capsys):
    # the paper's experiment on a folder of 3 x 14 x 10 colour images in two classes: every figure and the
    # report are made for that shape, the likelihood is named, and no classifier is asked for
    from PIL import Image

    from vaelab.cli import main

    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for name in ("circles", "lines"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for k in range(120):
            a = rng.integers(0, 60, (14, 10, 3), dtype=np.uint8)
            r, c = rng.integers(0, 8, 2)
            a[r:r + 5, c:c + (5 if name == "circles" else 2)] = rng.integers(150, 256, 3)
            Image.fromarray(a).save(tmp_path / "imgs" / name / f"{k}.png")
    out = tmp_path / "report"
    try:
        main(["reproduce", "--dataset", f"folder:{tmp_path / 'imgs'}", "--arch", "conv", "--likelihood",
              "continuous-bernoulli", "--epochs", "1", "--seeds", "1", "--latent-dims", "1", "--iwae-k", "5",
              "--iwae-images", "20",
              "--out", str(out)])
    except SystemExit as e:
        assert e.code == 0, capsys.readouterr().err
    for name in ("structure", "curves", "reconstructions", "samples", "latent", "manifold", "interpolation"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    config = json.loads((out / "runs" / "vae-paper-z1-s0" / "config.json").read_text())["config"]
    assert config["image_shape"] == [3, 14, 10] and config["classes"] == ["circles", "lines"]
    index = (out / "index.md").read_text()
    assert "your own images" in index and "continuous Bernoulli" in index and "3x14x10" in index
    assert f"--dataset folder:{tmp_path / 'imgs'} --arch conv --likelihood continuous-bernoulli" in index
    evaluation = json.loads((out / "runs" / "vae-elbo-z1-s0" / "evaluation.json").read_text())
    assert "realism" not in evaluation and evaluation["pixel_likelihood"]["name"] == "continuous-bernoulli"
    assert "class circles and lines" in index


def test_a_run_with_the_same_settings_under_another_preset_name_is_reused_and_other_settings_are_refused(tmp_path):
    from vaelab.reproduce import check_existing
    from vaelab.runfiles import save_config

    recipe = RunConfig.from_preset("z2-best", latent_dim=1)  # a latent-1 recipe run, as the study labelled it once
    save_config(tmp_path, recipe)
    check_existing(RunSpec(RunConfig.from_preset("z1-best"), None), tmp_path)  # the same settings: no error
    with pytest.raises(ReproduceError, match=r"k 5 \(asked 3\)"):
        check_existing(RunSpec(RunConfig.from_preset("z1-best", k=3), None), tmp_path)
