"""CLI fuzz: random argument lists to `vaelab` exit 0, 1 or 2 and never print a traceback; a refused
command (exit 2) writes nothing; a new run goes only into a new or empty directory; an image has the
format its suffix names; no message shows a Python exception name.

In this process through `vaelab.cli.main` (many examples), and a few through the installed `vaelab`
console script. Bounded so that no example trains for long or touches real data: the data are a fake
set (1,000 training images), there is no network, `--epochs` is at most 1 (a `train` without it gets
`--epochs 0`), numbers are small or too large for any allocation, and paths stay in a temporary
directory. What is fuzzed is parsing, validation, data loading, model building, the run-directory
writes, evaluation and sampling.
"""

import contextlib
import functools
import os
import re
import shutil
import string
import subprocess
import sys
import tempfile
import urllib.error
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from vaelab import data as vdata
from vaelab import evaluate as vevaluate
from vaelab import training as vtrain

from .faultkit import SMALL_ARGS, child_env, run_cli

RUN = "<run>"  # stands for a fresh copy of a trained run directory
DATA = "<data>"  # stands for the data root

# Free text has no digits, "/" or ".": numbers come from the bounded strategies below, and paths stay
# inside the example's temporary directory.
TEXT = st.text(alphabet=string.ascii_letters + "-_=,:@ ", max_size=10)
# Small numbers, and numbers too large for any allocation (they must fail at once, not fill memory).
INT = st.one_of(st.integers(-3, 9), st.sampled_from([10**12, 2**63, -(2**63) - 1, 10**20])).map(str)
FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str), st.sampled_from(["1e-30", "-0"]))
# Paths, with the semantic cases of issue 15: an existing file, a directory holding other files, an output
# in a folder that does not exist, image suffixes vaelab writes and one it does not.
PATH = st.sampled_from(["out", "a/b", ".", "", "x.png", "x.txt", RUN, DATA, "missing", "afile", "notes",
                        "nowhere/x.png", "x.jpg", "x.svg", "x.pdf", "x.gif", "X.PNG"])
# Numbers and lists as people mistype them: digit separators, signs, empty items, limits of a model.
INT = st.one_of(INT, st.sampled_from(["1_0", "+3", "0x10", "785", "1000", " 2"]))
LISTS = st.sampled_from(["10,,20", "8,", ",8", "8,8", "1_0", "+8", "8, 4", "", "8;4"])


def choice(*words: str):
    return st.one_of(st.sampled_from(words), TEXT)


OPTIONS = {
    "train": {"--model": choice("vae", "pca", "autoencoder"), "--objective": choice("paper", "elbo", "reconstruction",
              "squared-error"), "--latent-dim": INT,
              "--hidden": st.one_of(INT, LISTS, choice("8,4", "4,4,4", "8,-1", ",")),
              "--epochs": st.one_of(st.integers(-2, 1).map(str), TEXT), "--batch-size": st.one_of(
              st.sampled_from(["50", "300", "1000", "1001", "5000", "0", "-1"]), TEXT), "--lr": FLOAT, "--beta": FLOAT,
              "--binarize": choice("dynamic", "none"), "--dataset": choice("mnist", "fashion-mnist", "kmnist"),
              "--seed": st.integers(-(2**70), 2**70).map(str), "--device": choice("cpu", "cuda", "auto"),
              "--data-dir": PATH, "--out": PATH, "--resume": PATH},
    "evaluate": {"--data-dir": PATH, "--device": choice("cpu", "cuda", "auto"),
                 "--nll": st.one_of(choice("exact", "iwae", "exact,iwae", "exact,", "iwae,,exact", "exact,exact")),
                 "--k": st.integers(-1, 3).map(str), "--iwae-images": INT},
    "sample": {"-n": st.one_of(st.integers(-2, 20).map(str), TEXT), "-o": PATH, "--output": PATH,
               "--seed": st.integers(-(2**70), 2**70).map(str), "--device": choice("cpu", "cuda", "auto")},
    "version": {},
}
NOISE = st.one_of(st.sampled_from(["--no-such-flag", "-x", "--", "-", "--help", "frobnicate"]), TEXT, INT)
# Mostly well-formed, so that most examples get past parsing into the code behind it: a usable run
# directory as the positional argument and a --out or --resume for `train`, usually; noise rarely.
TARGET = {"train": st.one_of(st.tuples(st.sampled_from(["--out", "--resume"]), st.sampled_from(["out", RUN])),
                             st.tuples(st.sampled_from(["--out", "--resume"]), PATH), st.just(())),
          "evaluate": st.one_of(st.just((RUN,)), st.tuples(st.one_of(PATH, TEXT)), st.just(())),
          "sample": st.one_of(st.just((RUN,)), st.tuples(st.one_of(PATH, TEXT)), st.just(())),
          "version": st.just(())}
RARE_NOISE = st.one_of(st.just([]), st.just([]), st.just([]), st.lists(NOISE, min_size=1, max_size=2))


def command_line(name: str):
    """[name, target, --flag value ..., noise ...]"""
    options = OPTIONS[name]
    flags = st.lists(st.sampled_from(sorted(options)).flatmap(lambda f: options[f].map(lambda v: [f, v])),
                     max_size=5) if options else st.just([])
    return st.tuples(TARGET[name], flags, RARE_NOISE).map(
        lambda t: [name, *t[0], *(token for pair in t[1] for token in pair), *t[2]])


# Whole command lines a new user types (issue 15): a model's limits, options it does not use, a resume
# that asks for fewer epochs than done, outputs in other formats, an explicit --data-dir that lacks data.
UNUSED_BY_PCA = st.sampled_from([[], ["--epochs", "1"], ["--lr", "0.5"], ["--beta", "3"], ["--hidden", "7"],
                                 ["--batch-size", "3"]])
SEMANTIC = st.one_of(
    st.tuples(st.sampled_from(["1", "2", "784", "785", "1000"]), st.sampled_from(["10000", "10998", "10999"]),
              UNUSED_BY_PCA).map(lambda t: ["train", "--model", "pca", "--latent-dim", t[0], "--valid-size", t[1],
                                            *t[2], "--out", "out"]),
    st.sampled_from([[], ["--beta", "3"], ["--beta", "1"]]).map(
        lambda extra: ["train", "--model", "autoencoder", "--hidden", "8", *extra, "--epochs", "1", "--out", "out"]),
    st.tuples(st.sampled_from(["0", "1", "2"]), st.sampled_from([[], ["--lr", "1e-3"], ["--out", "out"]])).map(
        lambda t: ["train", "--resume", RUN, "--epochs", t[0], *t[1]]),
    PATH.map(lambda path: ["train", "--hidden", "8", "--epochs", "1", "--out", path]),
    PATH.map(lambda path: ["sample", RUN, "-n", "2", "-o", path]),
    PATH.map(lambda path: ["evaluate", RUN, "--data-dir", path]),
)
ARGV = st.one_of(*(command_line(name) for name in OPTIONS), SEMANTIC, st.lists(st.one_of(NOISE, PATH), max_size=4))
MAGIC = {".png": b"\x89PNG", ".jpg": b"\xff\xd8\xff", ".jpeg": b"\xff\xd8\xff", ".pdf": b"%PDF", ".svg": b"<?xml"}


def bounded(argv: list[str], run_dir: Path, data_root: Path) -> list[str]:
    """Placeholders filled in; `train` without --epochs gets --epochs 0 (its default, 30, is too long)."""
    argv = [str(run_dir) if a == RUN else str(data_root) if a == DATA else a for a in argv]
    return argv + ["--epochs", "0"] if argv[:1] == ["train"] and "--epochs" not in argv else argv


def refuse_downloads(*args, **kwargs):
    raise urllib.error.URLError("offline (test)")


@pytest.fixture
def world(trusted_cli_mnist, tmp_path, monkeypatch):
    """A trained run to copy per example, the CLI-sized fake data as $VAELAB_DATA, no network, and data
    loading memoized (the same files are loaded for most examples)."""
    monkeypatch.setenv(vdata.ENV_DATA, str(trusted_cli_mnist))
    monkeypatch.setattr(vdata.urllib.request, "urlopen", refuse_downloads)
    memoized = functools.lru_cache(maxsize=8)(vdata.load_data)
    monkeypatch.setattr(vtrain, "load_data", memoized)
    monkeypatch.setattr(vevaluate, "load_data", memoized)
    code, _, err = run_cli(["train", *SMALL_ARGS, "--epochs", "1", "--hidden", "8", "--out", tmp_path / "run"])
    assert code == 0, err
    (tmp_path / "data").symlink_to(trusted_cli_mnist)
    return tmp_path


# In CI (CI=true) the examples are a fixed sequence, so a submission's CI run is the run checked before it;
# elsewhere every run explores new command lines.
FIXED = bool(os.environ.get("CI"))


@settings(max_examples=200, deadline=None, database=None, derandomize=FIXED,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=ARGV)
# Command lines the fuzz found tracebacks with, now always run:
@example(argv=["train", "--out", "out", "--hidden", "1000000000000"])  # too large to allocate
@example(argv=["train", "--out", "out", "--latent-dim", str(2**63)])  # beyond int64
@example(argv=["train", "--out", "out", "--seed", str(2**70)])
@example(argv=["sample", RUN, "--seed", str(2**70)])
@example(argv=["evaluate", RUN, "--nll", "exact"])
@example(argv=["sample", RUN, "--help"])
@example(argv=["sample", RUN, "--output", "out", "--output", "x.png"])
def test_random_command_lines_in_process(argv, world):
    with tempfile.TemporaryDirectory(dir=world) as cwd, contextlib.chdir(cwd):
        shutil.copytree(world / "run", Path(cwd) / "run")
        (Path(cwd) / "afile").write_text("a file, not a directory")
        (Path(cwd) / "notes").mkdir()
        (Path(cwd) / "notes" / "todo.txt").write_text("someone else's file")
        argv = bounded(argv, Path(cwd) / "run", world / "data")
        before = tree(Path(cwd))
        code, out, err = run_cli(argv)  # any exception other than SystemExit fails the test here
        after = tree(Path(cwd))
    event(f"{argv[0] if argv else '(none)'} exits {code}")  # shown by --hypothesis-show-statistics
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in out + err, argv
    assert not re.search(r"\b\w+(Error|Exception)\b|got (True|False|None)\b", err), (argv, err)
    if code:
        assert err.strip(), argv
    if code == 2:  # refused: nothing written, moved or touched (the run's lock included)
        assert after == before, (argv, err, changed(before, after))
    if code == 0 and argv[:1] == ["train"] and "--out" in argv and not {"-h", "--help"} & set(argv):
        out_dir = argv[argv.index("--out") + 1]
        held = {k for k in before if k == out_dir or k.startswith(out_dir.rstrip("/") + "/")} if out_dir != "." \
            else set(before)
        assert not held, (argv, "a new run went into a directory holding files", sorted(held))
    if code == 0 and argv[:1] == ["sample"] and not {"-h", "--help"} & set(argv):  # help writes no image
        # the last -o/--output given is the one used (click's rule for a repeated option)
        output = next((argv[i + 1] for i in reversed(range(len(argv) - 1)) if argv[i] in ("-o", "--output")),
                      "samples.png")
        assert after[output].startswith(MAGIC[Path(output).suffix.lower()]), argv


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root`, relative path -> bytes (directories as b"<dir>")."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in root.rglob("*")}


def changed(before: dict, after: dict) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def vaelab_command() -> list[str]:
    script = shutil.which("vaelab", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-c", "from vaelab.cli import main; main()"]


@settings(max_examples=4, deadline=None, database=None, derandomize=FIXED,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=ARGV)
def test_random_command_lines_through_the_console_script(argv, tmp_path):
    with tempfile.TemporaryDirectory(dir=tmp_path) as cwd:
        # No data anywhere and no network: a training that gets past its arguments fails at the data.
        argv = bounded(argv, Path(cwd) / "missing-run", Path(cwd) / "missing-data")
        proc = subprocess.run(vaelab_command() + argv, cwd=cwd, env=child_env(Path(cwd)), capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode in (0, 1, 2), (argv, proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr, (argv, proc.stderr)
