"""The `vaelab` command in-process: the documented workflow works, bad input gets one line and exit 2."""

import json

import pytest

from conftest import FAKE_VALID
from conftest import run_in_process as run


def test_train_evaluate_sample_resume(fake_mnist, tmp_path, capsys):
    run_dir = tmp_path / "vae-z2"
    code, out, err = run(["train", "--model", "vae", "--objective", "paper", "--latent-dim", 2, "--hidden", "32,16",
                          "--epochs", 2, "--valid-size", FAKE_VALID, "--data-dir", fake_mnist, "--out", run_dir],
                         capsys)
    assert code == 0, err
    assert "2 epochs" in out and "best valid loss" in out
    code, out, err = run(["evaluate", run_dir, "--data-dir", fake_mnist], capsys)
    assert code == 0, err
    saved = json.loads((run_dir / "evaluation.json").read_text())
    assert f"{saved['test']['loss']:10.3f}" in out
    code, out, err = run(["evaluate", run_dir, "--data-dir", fake_mnist, "--precision", "float16"], capsys)
    assert code == 2 and "unknown precision 'float16'; choose one of: float32, bfloat16" in err
    code, out, err = run(["sample", run_dir, "-n", 16, "-o", tmp_path / "s.png"], capsys)
    assert code == 0, err
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = run(["train", "--resume", run_dir, "--epochs", 3, "--data-dir", fake_mnist], capsys)
    assert code == 0, err
    assert "3 epochs" in out
    code, out, err = run(["train", "--resume", run_dir, "--epochs", 3, "--data-dir", fake_mnist],
                         capsys)  # finished: a no-op
    assert code == 0 and "3 epochs" in out


@pytest.mark.parametrize("argv, message", [
    (["train", "--latent-dim", 0, "--out", "x"], "latent dim must be a whole number >= 1"),
    (["train", "--epochs", -1, "--out", "x"], "epochs must be a whole number >= 0"),
    (["train", "--model", "gan", "--out", "x"], "unknown model 'gan'"),
    (["train", "--objective", "mse", "--out", "x"], "unknown objective 'mse'"),
    (["train", "--model", "autoencoder", "--objective", "paper", "--out", "x"], "cannot train on objective"),
    (["train", "--dataset", "cifar", "--out", "x"], "unknown dataset 'cifar'"),
    (["train", "--hidden", "512,abc", "--out", "x"], "--hidden takes comma-separated"),
    (["train", "--epochs", 3], "give --out DIR"),
    (["train", "--latent-dim", "two", "--out", "x"], "--latent-dim takes a whole number, got 'two'"),
    (["train", "--no-such-flag"], "No such option"),
    (["evaluate", "does-not-exist"], "no such run directory"),
    (["frobnicate"], "No such command"),
    (["train", "--objective", "elbo", "--prior", "mog:0", "--out", "x"], "prior must be standard, mog:K or vamp:K"),
    (["train", "--objective", "elbo", "--prior", "vamp:x", "--out", "x"], "prior must be standard, mog:K or vamp:K"),
    (["train", "--prior", "mog:3", "--out", "x"], "a learned prior (mog:3) needs a VAE trained on elbo or iwae"),
    (["train", "--k", 5, "--out", "x"], "--k is the number of importance samples of --objective iwae"),
    (["train", "--objective", "elbo", "--k", 1, "--out", "x"], "--k is the number of importance samples"),
    (["train", "--objective", "iwae", "--k", 0, "--out", "x"], "k (importance samples) must be a whole number"),
    (["train", "--warmup", -2, "--out", "x"], "warmup must be a whole number of epochs >= 0"),
    (["train", "--lr-schedule", "step", "--out", "x"], "unknown learning-rate schedule 'step'"),
    (["train", "--preset", "z9-best", "--out", "x"], "unknown preset 'z9-best'; choose one of: z2-best"),
    (["train", "--preset", "z2-best", "--objective", "paper", "--out", "x"],
     "a learned prior (vamp:100) needs a VAE trained on elbo or iwae, not vae (paper): the paper's penalty is "
     "written against N(0, I) (--preset z2-best sets --model vae"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # nothing written


def test_foreign_directory_and_mismatched_checkpoint(fake_mnist, tmp_path, capsys):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("hello")
    code, _, err = run(["evaluate", tmp_path / "foreign"], capsys)
    assert code == 2 and "not a vaelab run directory" in err
    code, _, err = run(["train", "--resume", tmp_path / "foreign"], capsys)
    assert code == 2 and "not a vaelab run directory" in err
    run_dir = tmp_path / "run"
    code, _, err = run(["train", "--hidden", "16", "--epochs", 1, "--valid-size", FAKE_VALID, "--data-dir", fake_mnist,
                        "--out", run_dir], capsys)
    assert code == 0, err
    raw = json.loads((run_dir / "config.json").read_text())
    raw["config"]["hidden"] = [24]
    (run_dir / "config.json").write_text(json.dumps(raw))
    code, _, err = run(["sample", run_dir, "-o", tmp_path / "s.png"], capsys)
    assert code == 2 and "weights do not match config.json" in err and "config needs" in err
    assert "Traceback" not in err
    code, _, err = run(["train", "--out", run_dir], capsys)
    assert code == 2 and "already holds a run" in err
    code, _, err = run(["train", "--resume", run_dir, "--lr", "0.1"], capsys)
    assert code == 2 and "drop --lr" in err


def test_help_shows_examples(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "vaelab train --resume runs/vae-z2 --epochs 40" in out
    code, out, _ = run(["train", "--help"], capsys)
    assert code == 0 and "--latent-dim" in out and "--resume" in out


@pytest.mark.parametrize("command", ["train", "evaluate", "sample", "reproduce"])
def test_help_prints_defaults_plainly(command, capsys):
    """Plain-text help: no rich escapes such as '\\[default: auto]' leak into it."""
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0 and "[default: " in out and "\\[" not in out



def test_preset_expands_explicit_options_override_and_the_name_is_recorded(fake_mnist, tmp_path, capsys):
    run_dir = tmp_path / "best"
    code, out, err = run(["train", "--preset", "z2-best", "--k", 2, "--prior", "mog:3", "--hidden", "16",
                          "--batch-size", 50, "--epochs", 2, "--warmup", 1, "--valid-size", FAKE_VALID,
                          "--data-dir", fake_mnist, "--out", run_dir], capsys)
    assert code == 0, err
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert (config["preset"], config["objective"], config["k"], config["prior"], config["lr_schedule"],
            config["warmup"], config["epochs"], config["latent_dim"], config["batch_size"]) == (
        "z2-best", "iwae", 2, "mog:3", "cosine", 1, 2, 2, 50)
    code, out, err = run(["evaluate", run_dir, "--nll", "exact", "--data-dir", fake_mnist], capsys)
    assert code == 0, err
    assert "p(z) = mog:3 (learned)" in out and "exact NLL" in out
    code, out, err = run(["sample", run_dir, "-n", 4, "-o", tmp_path / "s.png"], capsys)
    assert code == 0, err
    code, _, err = run(["train", "--resume", run_dir, "--prior", "standard"], capsys)
    assert code == 2 and "drop --prior" in err
    code, out, _ = run(["train", "--help"], capsys)
    assert all(flag in out for flag in ("--k", "--prior", "--warmup", "--lr-schedule", "--preset"))
