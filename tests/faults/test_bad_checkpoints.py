"""Damaged or foreign checkpoints and run directories: each a clear one-line error (exit 2), never a
silent fresh start; `--resume` falls back from a damaged newest checkpoint to the previous complete one
with a warning; a pickle under a checkpoint's name is never unpickled."""

import json
import pickle
from pathlib import Path

import pytest
import torch

from conftest import FAKE_VALID
from vaelab.checkpoint import checkpoint_paths, load_tensors, save_tensors
from vaelab.config import RunConfig
from vaelab.training import train

from .faultkit import assert_one_clear_line, assert_same_run, run_cli

CONFIG = RunConfig(model="vae", objective="paper", latent_dim=2, hidden=(16,), epochs=3, batch_size=32,
                   valid_size=FAKE_VALID, seed=7)


def quiet(_message: str) -> None:
    pass


def make_run(run_dir: Path, data_root: Path, epochs: int = 3) -> Path:
    train(RunConfig(**{**CONFIG.to_dict(), "epochs": epochs}), run_dir, data_dir=data_root, progress=False,
          log=quiet)
    return run_dir


class Touch:
    """Unpickling this creates the file `path`: a marker that shows something was unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def evil_pickles(marker: Path, tmp_path: Path) -> list[bytes]:
    """A plain pickle and a torch.save file that create `marker` when loaded; checked to work here on a
    control marker, so a marker that stays absent later means "not unpickled", not "harmless pickle"."""
    control = tmp_path / "control-marker"
    assert not control.exists()
    pickle.loads(pickle.dumps(Touch(control)))
    assert control.exists()
    torch.save({"weights": Touch(marker)}, tmp_path / "evil.pt")
    return [pickle.dumps(Touch(marker)), (tmp_path / "evil.pt").read_bytes()]


def set_json(path: Path, change) -> None:
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def flip_a_weight_bit(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x10  # inside the last tensor's data
    path.write_bytes(bytes(blob))


def newer_format_weights(path: Path) -> None:
    tensors, meta = load_tensors(path)
    save_tensors(path, tensors, {**meta, "format_version": 99})


def mismatched_hidden(path: Path) -> None:
    set_json(path, lambda raw: raw["config"].update(hidden=[12]))


DAMAGE = {
    "truncated weights": ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:1000]),
                          ["model.safetensors: damaged or not a safetensors file"]),
    "flipped bit in weights": ("model.safetensors", flip_a_weight_bit,
                               ["model.safetensors: checksum mismatch"]),
    "config not JSON": ("config.json", lambda p: p.write_text('{"config": {"model": "vae",'),
                        ["config.json: not valid JSON"]),
    "config names an unknown model": ("config.json", lambda p: set_json(p, lambda r: r["config"].update(model="gan")),
                                      ["config.json: unknown model 'gan'"]),
    "shapes do not match the config": ("config.json", mismatched_hidden, [
        "model.safetensors: weights do not match config.json",
        "to_hidden.0.0.weight: file has (16, 784), config needs (12, 784)",
        "to_stats.weight: file has (4, 16), config needs (4, 12)",
        "decoder.to_logits.weight: file has (784, 16), config needs (784, 12)"]),
    "run directory from a newer format": ("config.json", lambda p: set_json(p, lambda r: r.update(format_version=99)),
                                          ["made by a newer vaelab (format 99"]),
    "weights from a newer format": ("model.safetensors", newer_format_weights,
                                    ["model.safetensors: written by a newer vaelab (format 99"]),
}


@pytest.mark.parametrize("case", DAMAGE)
@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_damaged_or_foreign_run_files_give_one_clear_line(case, command, fake_mnist, tmp_path):
    run_dir = make_run(tmp_path / "run", fake_mnist, epochs=1)
    name, damage, needles = DAMAGE[case]
    damage(run_dir / name)
    argv = [command, run_dir, *(["-o", tmp_path / "s.png"] if command == "sample" else ["--data-dir", fake_mnist])]
    code, out, err = run_cli(argv)
    assert code == 2, err
    assert_one_clear_line(err, *needles)
    assert not (run_dir / "evaluation.json").exists() and not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("missing, needle", [
    ("rng", "RNG state missing; cannot resume exactly"),
    ("optimizer.", "optimizer state missing or incomplete; cannot resume exactly"),
])
def test_a_checkpoint_without_rng_or_optimizer_state_is_an_error_not_a_fresh_start(missing, needle, fake_mnist,
                                                                                   tmp_path):
    run_dir = make_run(tmp_path / "run", fake_mnist, epochs=1)
    [only] = checkpoint_paths(run_dir)
    tensors, meta = load_tensors(only)
    save_tensors(only, {k: v for k, v in tensors.items() if not k.startswith(missing)}, meta)
    files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code, out, err = run_cli(["train", "--resume", run_dir, "--epochs", 2, "--data-dir", fake_mnist])
    assert code == 2, err
    assert_one_clear_line(err, f"{only}: {needle}")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == {
        p: b for p, b in files.items() if p.name != ".lock"}


def test_deleted_checkpoints_are_an_error_not_a_fresh_start(fake_mnist, tmp_path):
    run_dir = make_run(tmp_path / "run", fake_mnist, epochs=2)
    for path in checkpoint_paths(run_dir):
        path.unlink()
    code, out, err = run_cli(["train", "--resume", run_dir, "--epochs", 3, "--data-dir", fake_mnist])
    assert code == 2, err
    assert_one_clear_line(err, "no training checkpoint to resume from")
    assert checkpoint_paths(run_dir) == []


@pytest.mark.parametrize("damage", ["truncate", "pickle"])
def test_resume_falls_back_from_a_damaged_newest_checkpoint_with_a_warning(damage, fake_mnist, tmp_path):
    straight = make_run(tmp_path / "straight", fake_mnist, epochs=2)
    run_dir = make_run(tmp_path / "run", fake_mnist, epochs=2)
    newest, previous = checkpoint_paths(run_dir)
    marker = tmp_path / "unpickled-marker"
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[:-100])
    else:
        newest.write_bytes(evil_pickles(marker, tmp_path)[0])
    code, out, err = run_cli(["train", "--resume", run_dir, "--data-dir", fake_mnist])
    assert code == 0, err
    assert f"warning: skipped a damaged checkpoint: {newest}" in err
    assert f"resuming from {previous.name}" in err
    assert not marker.exists()
    assert_same_run(run_dir, straight)  # epoch 2 trained again from epoch 1's checkpoint


def test_pickles_under_checkpoint_names_are_never_unpickled(fake_mnist, tmp_path):
    run_dir = make_run(tmp_path / "run", fake_mnist, epochs=2)
    marker = tmp_path / "unpickled-marker"
    for blob in evil_pickles(marker, tmp_path):
        (run_dir / "model.safetensors").write_bytes(blob)
        for path in checkpoint_paths(run_dir):
            path.write_bytes(blob)
        for argv in (["evaluate", run_dir, "--data-dir", fake_mnist],
                     ["sample", run_dir, "-o", tmp_path / "s.png"],
                     ["train", "--resume", run_dir, "--epochs", 3, "--data-dir", fake_mnist]):
            code, out, err = run_cli(argv)
            assert code == 2, err
            assert_one_clear_line(err, "damaged or not a safetensors file")
    assert not marker.exists()
