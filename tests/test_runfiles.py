"""Run-directory files: atomic writes, JSON, the config file, metrics, the lock, stale temp files."""

import json
import os

import pytest

from vaelab.config import RunConfig
from vaelab.runfiles import (
    CheckpointError,
    RunInUseError,
    append_timing,
    atomic_write,
    load_config,
    read_json,
    read_metrics,
    remove_stale_temp_files,
    run_lock,
    save_config,
    write_metrics,
)
from vaelab.version import __version__

CONFIG = RunConfig(model="vae", objective="elbo", latent_dim=2, hidden=(16, 8))


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no such run directory"):
        load_config(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="not a vaelab run directory"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_config(tmp_path)
    save_config(tmp_path, CONFIG)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["config"]["model"] = "transformer"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="unknown model 'transformer'"):
        load_config(tmp_path)
    raw["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="newer vaelab"):
        load_config(tmp_path)
    save_config(tmp_path, CONFIG)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.update(format_version=1, vaelab_version="0.1.0")  # binarized with another draw: refused
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"older vaelab \(format 1, 0\.1\.0\).*train it again"):
        load_config(tmp_path)


def test_config_round_trip_records_the_version(tmp_path):
    save_config(tmp_path, CONFIG)
    assert load_config(tmp_path) == CONFIG
    assert json.loads((tmp_path / "config.json").read_text())["vaelab_version"] == __version__


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, b"old")
    atomic_write(path, b"new contents")
    assert path.read_bytes() == b"new contents" and os.stat(path).st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    with pytest.raises(OSError) as error:
        atomic_write(tmp_path / "missing-dir" / "f", b"x")
    assert error.value.filename == str(tmp_path / "missing-dir" / "f")


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        read_json(tmp_path / "none.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        read_json(tmp_path / "list.json")


def test_metrics_are_rewritten_not_appended_and_timing_is_appended(tmp_path):
    write_metrics(tmp_path, [{"epoch": 1}, {"epoch": 2}])
    write_metrics(tmp_path, [{"epoch": 1}])
    assert read_metrics(tmp_path) == [{"epoch": 1}]
    append_timing(tmp_path, {"epoch": 1, "seconds": 1.0})
    append_timing(tmp_path, {"epoch": 2, "seconds": 2.0})
    assert len((tmp_path / "timing.jsonl").read_text().splitlines()) == 2
    assert read_metrics(tmp_path / "nowhere") == []


def test_the_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(RunInUseError, match=f"vaelab process {os.getpid()}"):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released when the first holder left
        pass


def test_stale_temp_files_are_removed_and_real_files_kept(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / ".config.json.abc.tmp", tmp_path / ".metrics.jsonl.x.tmp",
             tmp_path / "checkpoints" / ".step-000000001.safetensors.y.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    save_config(tmp_path, CONFIG)
    remove_stale_temp_files(tmp_path)
    assert not any(p.exists() for p in stale) and load_config(tmp_path) == CONFIG
