"""Bad or unusual input as a new user types it (issue 15), one test per class of problem: every limit is
checked before anything is written; --resume never moves a run's target below what it has done; every
message is true and its advice works; a new run goes only into a new or empty directory; one strict
parser for lists, numbers and paths; a non-finite result is an error; options without effect are
refused; explicit options are used or are an error; image formats follow the suffix; exit codes follow
one rule; the conventions (--version, -h, singular words); lock hygiene."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from vaelab import objectives as vobjectives
from vaelab.checkpoint import checkpoint_paths, load_tensors, save_tensors
from vaelab.runfiles import LOCK_FILE, RunInUseError, run_lock
from vaelab.version import __version__

from .faultkit import SMALL_ARGS, assert_one_clear_line, run_cli


def files(root: Path) -> dict[str, bytes]:
    """Every file under `root` (lock included) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def option_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def without(args: list[str], *flags: str) -> list[str]:
    """`args` less the given flags and their values."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        else:
            out.append(a)
    return out


@pytest.fixture
def data(trusted_cli_mnist, monkeypatch):
    """The CLI-sized fake MNIST (1,000 training images) as $VAELAB_DATA."""
    monkeypatch.setenv("VAELAB_DATA", str(trusted_cli_mnist))
    return trusted_cli_mnist


@pytest.fixture
def run(data, tmp_path) -> Path:
    """A finished 2-epoch VAE run (SMALL_ARGS)."""
    code, _, err = run_cli(["train", *SMALL_ARGS, "--out", tmp_path / "run"])
    assert code == 0, err
    return tmp_path / "run"


# --- 1. every limit a model has is checked before anything is written (exit 2) ---------------------

PCA = ["--model", "pca", "--device", "cpu"]


@pytest.mark.parametrize("args, needle", [
    (PCA + ["--latent-dim", "1000"], "latent dim 1000 is more than a pca model can have"),
    (PCA + ["--latent-dim", "785"], "at most one component per pixel (784)"),
    (PCA + ["--latent-dim", "5", "--valid-size", "10996"], "more than a pca fit to 4 training images can have"),
    (PCA + ["--valid-size", "10999"], "more than a pca fit to 1 training image can have (at most 0"),
    (PCA + ["--valid-size", "11000"], "valid size 11000 must be between 1 and 10999"),
    (without(SMALL_ARGS, "--batch-size") + ["--batch-size", "1001"], "batch size 1001 is larger than the training set"),
    (SMALL_ARGS + ["--hidden", "1000000000000"], "too large"),
])
def test_model_limits_are_checked_before_anything_is_written(args, needle, data, tmp_path):
    code, _, err = run_cli(["train", *args, "--out", tmp_path / "p"])
    assert code == 2, err
    assert_one_clear_line(err, needle)
    assert not (tmp_path / "p").exists()


def test_a_run_directory_whose_config_breaks_a_limit_is_refused_by_resume(data, tmp_path):
    run_dir = tmp_path / "p"
    code, _, err = run_cli(["train", *PCA, "--out", run_dir])
    assert code == 0, err
    raw = json.loads((run_dir / "config.json").read_text())
    raw["config"]["latent_dim"] = 1000  # as v0.2 left it after the traceback
    (run_dir / "config.json").write_text(json.dumps(raw))
    before = files(run_dir)
    code, _, err = run_cli(["train", "--resume", run_dir])
    assert code == 2
    assert_one_clear_line(err, "config.json: latent dim 1000 is more than a pca model can have")
    assert files(run_dir) == before


# --- 2. --resume never moves a run's target below what it has done ---------------------------------

@pytest.mark.parametrize("asked", [1, 0])
def test_resume_asking_for_fewer_epochs_than_done_changes_nothing(asked, run):
    before = files(run)
    code, out, err = run_cli(["train", "--resume", run, "--epochs", asked])
    assert code == 0, err
    assert f"{run}: 2 of 2 epochs done; --epochs {asked} would go back, so nothing changed" in err
    assert out.strip().startswith(f"{run}: 2 epochs, best valid loss")
    assert files(run) == before  # config.json still says 2, metrics.jsonl still has 2 lines


def test_an_interrupted_run_keeps_its_target_and_the_printed_command_continues_it(run):
    """A run with 2 of 4 epochs done (as an interrupt leaves it): --epochs 0 or 1 is a no-op that says how
    to continue, and that command then trains to 4."""
    raw = json.loads((run / "config.json").read_text())
    raw["config"]["epochs"] = 4
    (run / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    before = files(run)
    code, out, err = run_cli(["train", "--resume", run, "--epochs", 0])
    assert code == 0, err
    assert f"2 of 4 epochs done; --epochs 0 would go back, so nothing changed (continue with: vaelab train " \
           f"--resume {run})" in err
    assert f"{run}: 2 of 4 epochs done, best valid loss" in out
    assert files(run) == before
    code, out, err = run_cli(["train", "--resume", run])
    assert code == 0, err
    assert f"{run}: 4 epochs, best valid loss" in out
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 4
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4


def test_a_mid_epoch_checkpoint_counts_as_begun(run):
    """Ctrl-C inside epoch 3 leaves 2 epochs done and the third begun: --epochs 2 would drop that work."""
    newest = checkpoint_paths(run)[0]
    tensors, meta = load_tensors(newest)
    meta["state"]["batch"] = 5
    tensors.update({"epoch.perm": torch.arange(10), "epoch.sums": torch.zeros(3, dtype=torch.float64)})
    save_tensors(newest, tensors, meta)
    before = files(run)
    code, _, err = run_cli(["train", "--resume", run, "--epochs", 2])
    assert code == 0, err
    assert "2 of 2 epochs done and the next one begun; --epochs 2 would go back" in err
    assert files(run) == before


# --- 3. messages are true and their advice works ------------------------------------------------------

def diverge_at(monkeypatch, step: int):
    """The paper objective turns NaN at training call `step` (counted over the run); returns the original."""
    original, calls = vobjectives.OBJECTIVES["paper"], {"n": 0}

    def faulty(model, x, **kwargs):
        terms = original(model, x, **kwargs)
        if model.training:
            calls["n"] += 1
            if calls["n"] == step:
                terms["loss"] = terms["loss"] * math.nan
        return terms

    monkeypatch.setitem(vobjectives.OBJECTIVES, "paper", faulty)
    return original


def test_a_run_diverging_before_its_first_checkpoint_says_nothing_was_saved_and_out_may_be_reused(
        data, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    original = diverge_at(monkeypatch, 3)
    code, _, err = run_cli(["train", *SMALL_ARGS, "--lr", "1e6", "--out", run_dir])
    assert code == 1
    assert_one_clear_line(err, "non-finite loss (nan) at epoch 1, step 3 of 20",
                          f"nothing was saved (no epoch finished). Start again with a lower --lr; --out {run_dir} "
                          "may be reused")
    assert "checkpoint (epoch" not in err and checkpoint_paths(run_dir) == []
    monkeypatch.setitem(vobjectives.OBJECTIVES, "paper", original)
    code, _, err = run_cli(["evaluate", run_dir])
    assert code == 2
    assert_one_clear_line(err, f"{run_dir} has no finished epoch yet", f"--out {run_dir} and a lower --lr")
    code, _, err = run_cli(["train", "--resume", run_dir, "--lr", "1e-3"])
    assert code == 2
    assert_one_clear_line(err, "drop --lr (other settings need a new run: --out NEW)")
    code, out, err = run_cli(["train", *SMALL_ARGS, "--lr", "1e-3", "--out", run_dir])  # the advice works
    assert code == 0, err
    assert json.loads((run_dir / "config.json").read_text())["config"]["lr"] == 1e-3
    assert f"{run_dir}: 2 epochs" in out


def test_a_run_diverging_later_names_its_checkpoint_and_does_not_advise_resume_for_a_new_lr(
        data, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    diverge_at(monkeypatch, 25)
    code, _, err = run_cli(["train", *SMALL_ARGS, "--out", run_dir])
    assert code == 1
    assert_one_clear_line(err, "the last good checkpoint (epoch 1) is intact",
                          "for a lower --lr start a new run (another --out)")
    code, _, err = run_cli(["train", *SMALL_ARGS, "--out", run_dir])  # it holds a checkpoint: refused
    assert code == 2
    assert_one_clear_line(err, f"{run_dir} already holds a run; continue it with --resume {run_dir}")


# --- 4. a new run goes only into a new or empty directory -----------------------------------------

def test_out_must_be_new_or_empty(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run_cli(["train", *SMALL_ARGS, "--out", ""])
    assert code == 2
    assert_one_clear_line(err, "--out takes a path, got ''")
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "a.txt").write_text("a")
    (crowded / "sub").mkdir()
    for out, needle in ((".", ". is not empty (it holds crowded, notes.txt)"),
                        (crowded, f"{crowded} is not empty (it holds a.txt, sub)"),
                        (tmp_path / "notes.txt", "is a file, not a directory")):
        before = files(tmp_path)
        code, _, err = run_cli(["train", *SMALL_ARGS, "--out", out])
        assert code == 2, (out, err)
        assert_one_clear_line(err, needle)
        assert files(tmp_path) == before
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["train", *SMALL_ARGS, "--epochs", "1", "--out", "empty"])
    assert code == 0, err
    assert (tmp_path / "empty" / "config.json").exists()


# --- 5. lists, numbers and paths: one strict parser, the same rules and messages everywhere ---------

@pytest.mark.parametrize("argv, needle", [
    (["train", "--hidden", "10,,20", "--out", "x"], "--hidden takes comma-separated whole numbers >= 1 like 512,256, "
                                                    "got '10,,20': an item is empty"),
    (["train", "--hidden", "10,", "--out", "x"], "an item is empty"),
    (["train", "--hidden", "1_0", "--out", "x"], "'1_0' is not one"),
    (["reproduce", "--latent-dims", "1,,2", "--out", "x"], "--latent-dims takes comma-separated distinct whole "
                                                           "numbers >= 1 like 1,2, got '1,,2': an item is empty"),
    (["reproduce", "--latent-dims", "1,1", "--out", "x"], "an item is repeated"),
    (["evaluate", "<run>", "--nll", "exact,,iwae"], "--nll takes exact or iwae (comma-separated), got "
                                                     "'exact,,iwae': an item is empty"),
    (["evaluate", "<run>", "--nll", "exact,exact"], "an item is repeated"),
    (["train", "--latent-dim", "1_0", "--out", "x"], "--latent-dim takes a whole number, got '1_0'"),
    (["train", "--seed", "+3", "--out", "x"], "--seed takes a whole number, got '+3'"),
    (["train", "--lr", "nan", "--out", "x"], "--lr takes a finite number like 0.002 or 2e-3, got 'nan'"),
    (["train", "--beta", "1e999", "--out", "x"], "--beta takes a finite number"),
    (["sample", "<run>", "-n", "1.5"], "-n takes a whole number >= 1 and <= 10000, got '1.5'"),
    (["sample", "<run>", "-n", "0"], "-n takes a whole number >= 1 and <= 10000, got 0"),
    (["evaluate", "<run>", "--nll", "iwae", "--k", "0"], "--k takes a whole number >= 1, got 0"),
    (["train", "--resume", ""], "--resume takes a path, got ''"),
    (["evaluate", ""], "RUN_DIR takes a path, got ''"),
    (["train", "--data-dir", "", "--out", "x"], "--data-dir takes a path, got ''"),
    (["reproduce", "--out", ""], "--out takes a path, got ''"),
])
def test_lists_numbers_and_paths_are_parsed_strictly(argv, needle, run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = files(tmp_path)
    code, _, err = run_cli([str(run) if a == "<run>" else a for a in argv])
    assert code == 2
    assert_one_clear_line(err, needle)
    assert files(tmp_path) == before


# --- 6. a non-finite result is an error, for every model ---------------------------------------------

@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_weights_holding_nan_are_never_evaluated_or_sampled(command, data, tmp_path):
    run_dir = tmp_path / "pca"
    code, _, err = run_cli(["train", *PCA, "--out", run_dir])
    assert code == 0, err
    tensors, meta = load_tensors(run_dir / "model.safetensors")
    tensors["components"][0, 0] = math.nan
    save_tensors(run_dir / "model.safetensors", tensors, meta)
    code, _, err = run_cli([command, run_dir, *(["-o", tmp_path / "s.png"] if command == "sample" else [])])
    assert code == 2
    assert_one_clear_line(err, "model.safetensors: components holds NaN or infinity")
    assert not (run_dir / "evaluation.json").exists() and not (tmp_path / "s.png").exists()


def test_a_non_finite_evaluation_is_an_error_and_is_not_saved(run, monkeypatch):
    from vaelab import evaluate as vevaluate

    real = vevaluate.evaluate_objective
    monkeypatch.setattr(vevaluate, "evaluate_objective",
                        lambda *a, **k: {**real(*a, **k), "loss": math.inf})
    code, _, err = run_cli(["evaluate", run])
    assert code == 1
    assert_one_clear_line(err, "the valid loss inf per image is not a finite number; nothing was saved")
    assert not (run / "evaluation.json").exists()


def test_a_pca_fit_that_comes_out_non_finite_is_an_error_and_saves_nothing(data, tmp_path, monkeypatch):
    from vaelab.models import PCA as PCAModel

    real_fit = PCAModel.fit

    def nan_fit(self, x):
        real_fit(self, x)
        self.components.fill_(math.nan)
        return self

    monkeypatch.setattr(PCAModel, "fit", nan_fit)
    code, _, err = run_cli(["train", *PCA, "--out", tmp_path / "p"])
    assert code == 1
    assert_one_clear_line(err, "the pca fit gave a non-finite result", "nothing was saved")
    assert not (tmp_path / "p" / "model.safetensors").exists()


# --- 7. options that have no effect are refused ---------------------------------------------------------

@pytest.mark.parametrize("model, args, needle", [
    ("pca", ["--epochs", "5", "--lr", "0.5", "--beta", "3", "--hidden", "7", "--batch-size", "3"],
     "--hidden, --batch-size, --lr, --beta, --epochs have no effect on a pca model"),
    ("pca", ["--epochs", "0"], "--epochs has no effect on a pca model (a pca model is fit in closed form"),
    ("pca", ["--hidden", "512,256"], "--hidden has no effect on a pca model"),
    ("autoencoder", ["--beta", "3"], "--beta has no effect on an autoencoder model (the autoencoder trains on "
                                     "reconstruction alone"),
    ("autoencoder", ["--beta", "1"], "--beta has no effect"),  # even the default value, named explicitly
])
def test_options_without_effect_are_refused(model, args, needle, data, tmp_path):
    code, _, err = run_cli(["train", "--model", model, *args, "--out", tmp_path / "r"])
    assert code == 2
    assert_one_clear_line(err, needle)
    assert not (tmp_path / "r").exists()


def test_options_without_effect_on_an_existing_pca_run_are_refused(data, tmp_path):
    code, out, err = run_cli(["train", *PCA, "--out", tmp_path / "p"])
    assert code == 0, err
    assert out.strip().startswith(f"{tmp_path / 'p'}: fit, valid loss")
    before = files(tmp_path / "p")
    code, _, err = run_cli(["train", "--resume", tmp_path / "p", "--epochs", "3"])
    assert code == 2
    assert_one_clear_line(err, "--epochs has no effect on a pca model")
    code, _, err = run_cli(["evaluate", tmp_path / "p", "--nll", "exact"])
    assert code == 2
    assert_one_clear_line(err, "--nll has no effect on a pca run: it defines no p(x)")
    assert files(tmp_path / "p") == before


# --- 8. what the user names explicitly is used or is an error ------------------------------------------

@pytest.mark.parametrize("kind", ["missing", "a file", "empty"])
def test_an_explicit_data_dir_that_lacks_the_data_is_an_error_even_with_vaelab_data_set(kind, run, tmp_path,
                                                                                        monkeypatch):
    monkeypatch.setattr("vaelab.data.urllib.request.urlopen", _offline)
    given = tmp_path / "given"
    if kind == "a file":
        given.write_text("x")
    elif kind == "empty":
        given.mkdir()
    code, _, err = run_cli(["evaluate", run, "--data-dir", given])
    assert code == 2
    assert_one_clear_line(err, str(given))
    assert not (run / "evaluation.json").exists()
    error_lines = err.strip().splitlines()
    assert len(error_lines) <= 6 and max(map(len, error_lines)) <= 200, err  # a few short lines


def _offline(*args, **kwargs):
    import urllib.error

    raise urllib.error.URLError("offline (test)")


# --- 9. output formats follow the suffix --------------------------------------------------------------

@pytest.mark.parametrize("name, magic", [("s.png", b"\x89PNG"), ("s.PNG", b"\x89PNG"), ("s.jpg", b"\xff\xd8\xff"),
                                         ("s.jpeg", b"\xff\xd8\xff"), ("s.pdf", b"%PDF"), ("s.svg", b"<?xml")])
def test_sample_writes_the_format_its_suffix_names(name, magic, run, tmp_path):
    code, out, err = run_cli(["sample", run, "-n", "1", "-o", tmp_path / name])
    assert code == 0, err
    assert out.strip() == f"wrote 1 sample to {tmp_path / name}"
    assert (tmp_path / name).read_bytes().startswith(magic)


@pytest.mark.parametrize("output, needle", [
    ("s.gif", "the file name must end in .png, .jpg, .jpeg, .pdf, .svg"),
    ("samples", "the file name must end in"),
    ("", "-o takes a path, got ''"),
    ("<dir>/x.png", "x.png is a directory"),
    ("nowhere/x.png", "nowhere: no such folder for x.png"),
])
def test_sample_refuses_outputs_it_cannot_write_before_any_work(output, needle, run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir" / "x.png").mkdir(parents=True)
    before = files(tmp_path)
    code, _, err = run_cli(["sample", run, "-o", output.replace("<dir>", "dir")])
    assert code == 2
    assert_one_clear_line(err, needle)
    assert files(tmp_path) == before


# --- 10. exit codes follow one rule: 2 fixable in the command, 1 a failure during the work -------------

def _damage_config(run_dir: Path) -> None:
    (run_dir / "config.json").write_text("{not json")


def _delete_weights(run_dir: Path) -> None:
    (run_dir / "model.safetensors").unlink()


@pytest.mark.parametrize("argv, prepare, code", [
    (["train", *SMALL_ARGS, "--out", "<file>"], None, 2),  # a path that is a file
    (["train", *SMALL_ARGS, "--out", "<file>/run"], None, 2),  # a folder that cannot be made
    (["train", *SMALL_ARGS, "--data-dir", "<file>", "--out", "new"], None, 2),
    (["evaluate", "<file>"], None, 2),
    (["evaluate", "<run>"], _damage_config, 2),  # damaged run files the user pointed at
    (["sample", "<run>", "-o", "s.png"], _damage_config, 2),
    (["train", "--resume", "<run>"], _damage_config, 2),
    (["evaluate", "<run>"], _delete_weights, 2),  # missing run files
    (["sample", "<run>", "-o", "missing-folder/s.png"], None, 2),
    (["train", "--resume", "<run>", "--epochs", "3", "--data-dir", "<missing>"], None, 2),
    (["train", *SMALL_ARGS, "--out", "new", "--data-dir", "<damaged-data>"], None, 1),  # fails during the work
])
def test_exit_codes_follow_one_rule_across_commands(argv, prepare, code, run, data, tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("a file")
    damaged = tmp_path / "damaged-data"
    shutil.copytree(data, damaged)
    images = next((damaged / "MNIST" / "raw").glob("train-images*"))
    images.write_bytes(images.read_bytes()[:1000])
    if prepare:
        prepare(run)
    names = {"<file>": "file", "<run>": str(run), "<missing>": str(tmp_path / "missing"),
             "<damaged-data>": str(damaged)}
    argv = [re.sub("|".join(map(re.escape, names)), lambda m: names[m.group(0)], a) for a in argv]
    got, _, err = run_cli(argv)
    assert got == code, (argv, err)
    assert_one_clear_line(err)


# --- 11. the conventions people type first ---------------------------------------------------------------

def test_version_and_short_help_everywhere():
    code, out, _ = run_cli(["--version"])
    assert code == 0 and out.strip() == f"vaelab {__version__}"
    for command in ([], ["train"], ["evaluate"], ["sample"], ["reproduce"], ["version"]):
        code, out, err = run_cli([*command, "-h"])
        assert code == 0 and out.startswith("Usage: vaelab"), (command, err)
    code, out, _ = run_cli(["train", "-h"])
    assert re.search(r"--out PATH\s+New run directory.*\[required unless\s+--resume\]", out, re.S)


def test_singular_words_and_no_python_names_in_messages(data, tmp_path):
    code, out, err = run_cli(["train", *SMALL_ARGS, "--epochs", "1", "--out", tmp_path / "r"])
    assert code == 0 and f"{tmp_path / 'r'}: 1 epoch, best valid loss" in out, err
    raw = json.loads((tmp_path / "r" / "config.json").read_text())
    raw["config"]["batch_size"] = True
    (tmp_path / "r" / "config.json").write_text(json.dumps(raw))
    code, _, err = run_cli(["evaluate", tmp_path / "r"])
    assert code == 2
    assert_one_clear_line(err, "batch size must be a whole number >= 1, got true")  # JSON's word, not Python's
    (tmp_path / "r" / "config.json").write_text("{")
    code, _, err = run_cli(["evaluate", tmp_path / "r"])
    assert code == 2
    assert_one_clear_line(err, "config.json: not valid JSON")  # no "(JSONDecodeError)"
    (tmp_path / "r" / "model.safetensors").write_text("{")
    code, _, err = run_cli(["sample", tmp_path / "r"])
    assert code == 2 and "Error" not in err


# --- 12. lock hygiene ------------------------------------------------------------------------------------

def test_a_refused_out_does_not_touch_the_runs_lock(run):
    (run / LOCK_FILE).write_text("vaelab process 424242\n")  # as the process that trained it left it
    before = files(run)
    code, _, err = run_cli(["train", *SMALL_ARGS, "--out", run])
    assert code == 2
    assert_one_clear_line(err, "already holds a run")
    assert files(run) == before


def test_a_process_refused_the_lock_leaves_the_holders_text(tmp_path):
    with run_lock(tmp_path):
        holder_text = (tmp_path / LOCK_FILE).read_text()
        with pytest.raises(RunInUseError, match=re.escape(holder_text.strip())), run_lock(tmp_path):
            pass
        assert (tmp_path / LOCK_FILE).read_text() == holder_text


@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_a_run_without_a_finished_epoch_says_so_and_whether_it_is_in_use(command, run, tmp_path):
    (run / "model.safetensors").unlink()
    for path in checkpoint_paths(run):
        path.unlink()
    argv = [command, run, *(["-o", tmp_path / "s.png"] if command == "sample" else [])]
    with run_lock(run):  # as a training process holds it (flock is per open file, so this is real contention)
        code, _, err = run_cli(argv)
        holder_text = (run / LOCK_FILE).read_text().strip()
    assert code == 2
    assert_one_clear_line(err, f"{run} has no finished epoch yet: it is in use ({holder_text} is training in it)")
    assert "model.safetensors" not in err
    code, _, err = run_cli(argv)
    assert code == 2
    assert_one_clear_line(err, f"{run} has no finished epoch yet", f"vaelab train --resume {run}")


@pytest.mark.parametrize("output", ["page.png", "page"])
def test_explore_refuses_an_output_that_is_not_html_before_any_work(output, run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = files(tmp_path)
    code, _, err = run_cli(["explore", run, "-o", output])
    assert code == 2
    assert_one_clear_line(err, f"{output}: the explorer writes an HTML page; end the file name in .html")
    assert files(tmp_path) == before
