"""Issue 12's study: the z2-best recipe and its ablations, for latent dimension 1 and 2, over seeds.

Every variant is the recipe (config.PRESETS["z2-best"], at each latent dimension) with one lever removed
(iwae -> elbo, the learned prior -> N(0, I), no warm-up, constant lr, 20 epochs: reproduce's budget when
this was measured), plus the baseline with all of them removed. Each run keeps its best-validation epoch (the trainer's
model.safetensors); the variant chosen per latent dimension is the one with the lowest mean exact NLL on
the validation set over the seeds that all variants have (none is chosen where they have none in common).
Printed per variant: validation exact NLL, test exact NLL, test IWAE_k (default k = 5000) and test -ELBO,
nats per image, mean ± sd over seeds, and the training wall time; the CPU it ran on.

Run on demand (many hours on 2 idle cores; not in CI), in parts if need be: finished runs in OUT/runs are
reused, killed ones resume, and each run's scores are kept in its study.json (a `vaelab evaluate RUN --nll
exact,iwae --k K` already run on the same weights and images is reused too); `--variants` picks some:
    VAELAB_DATA=../shared/data .venv/bin/python benchmarks/likelihood_study.py --out study
    ... --variants recipe --latent-dims 2     # the recipe alone
    ... --quick    # the same pipeline in minutes: 1 seed, 2 epochs, 10000 training images, small k
    ... --workers 2   # two runs at a time, each in its own process with its share of the cores
    ... --seeds 1-2 --include benchmarks/results/likelihood_study-*.json   # a later part, with the earlier ones
Runs are trained first (in this process, or `--workers N` at a time as `vaelab reproduce --workers N` trains
its runs), then scored here one after another with all cores. The table (and OUT/results.{md,json}) lists
the runs asked for and every other run of the study in OUT already finished and scored with the same
settings, so that a study run in parts ends with one table. A part run elsewhere (another session's
machine, whose runs are gone) joins through its results.json (`--include`, rows of the same settings
only; each row names the CPU that scored it): the study's parts so far are kept in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from vaelab import executors
from vaelab.checkpoint import load_trained
from vaelab.config import PRESETS, QUICK_TRAIN_IMAGES, RunConfig, parse_hidden
from vaelab.data import load_data
from vaelab.device import cpu_model
from vaelab.evaluate import evaluate_run
from vaelab.likelihood import exact_nll
from vaelab.reproduce import ReproduceError, RunSpec, check_existing, ensure_run, is_complete, train_job
from vaelab.runfiles import CONFIG_FILE, EVALUATION_FILE
from vaelab.training import TrainingInterrupted

RECIPE = "z2-best"
# The short budget the "- epochs" variant trains: reproduce's budget when this study was measured (20 epochs,
# at the recipe's batch of 512), kept so that the README's ablation stays comparable.
SHORT_EPOCHS = 20
# lever -> the values that remove it from the recipe
LEVERS = {
    "iwae": {"objective": "elbo", "k": 1},
    "prior": {"prior": "standard"},
    "warmup": {"warmup": 0},
    "cosine": {"lr_schedule": "constant"},
    "epochs": {"epochs": SHORT_EPOCHS},
}
# Bumped when scored() returns new fields, so that runs scored before are scored again (their evaluation.json
# is reused where it fits; the validation NLL is computed again).
SCORES_VERSION = 2
QUICK = {"epochs": 2, "seeds": 1, "iwae_k": 50, "iwae_images": 200, "nll_images": 500}


def variants(epochs: int) -> dict[str, dict]:
    """Variant name -> options on top of the recipe: the recipe, each lever removed, the baseline."""
    out = {"recipe": {}}
    for lever, removed in LEVERS.items():
        if lever == "epochs" and epochs <= SHORT_EPOCHS:
            continue  # the budget is already that short (or shorter): nothing to remove
        out[f"- {lever}"] = removed
    out["baseline"] = {k: v for lever, removed in LEVERS.items() if lever != "epochs" for k, v in removed.items()}
    return out


def recipe_preset(latent_dim: int) -> str | None:
    """The PRESETS name of the recipe at `latent_dim` (z1-best at 1, z2-best at 2; None where none is named),
    recorded in a recipe run's config.json."""
    recipe = {**PRESETS[RECIPE], "latent_dim": latent_dim}
    return next((name for name, values in PRESETS.items() if values == recipe), None)


def configs(*, latent_dim: int, seed: int, epochs: int, valid_size: int, **overrides) -> dict:
    """Variant name -> its RunConfig; `overrides` (say hidden, batch_size) apply to all variants."""
    base = {**PRESETS[RECIPE], "latent_dim": latent_dim, "seed": seed, "epochs": epochs, "valid_size": valid_size,
            **overrides}
    out = {}
    for name, removed in variants(epochs).items():
        values = {**base, **removed}
        if "epochs" in removed:
            values["epochs"] = min(epochs, removed["epochs"])
        out[name] = RunConfig(**values, preset=recipe_preset(latent_dim) if not removed else None)
    return out


def scored(run_dir: Path, *, data, nll_images: int | None, iwae_k: int, iwae_images: int | None,
           saved_only: bool = False) -> dict | None:
    """Validation exact NLL, test exact NLL, test IWAE_k and −ELBO of a run's best weights; kept in the run's
    study.json and reused while the run's best epoch and these settings are unchanged (an evaluation of a
    learned-prior model takes minutes). `saved_only`: those kept, or None."""
    model, config, meta = load_trained(run_dir, "cpu")
    key = {"version": SCORES_VERSION, "best_epoch": meta.get("epoch"), "nll_images": nll_images, "iwae_k": iwae_k,
           "iwae_images": iwae_images}
    cache = run_dir / "study.json"
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["scores"]
    if saved_only:
        return None
    valid_nll = float(exact_nll(model, data.valid[:nll_images], objective=config.objective).nll.mean())
    n_test = len(data.test[:nll_images])
    saved = json.loads((run_dir / EVALUATION_FILE).read_text()) if (run_dir / EVALUATION_FILE).exists() else {}
    likelihood = saved.get("likelihood") or {}
    if not (saved.get("epoch") == meta.get("epoch") and likelihood.get("exact", {}).get("images") == n_test
            and likelihood.get("iwae", {}).get("k") == iwae_k
            and likelihood["iwae"].get("images") == len(data.test[:iwae_images or n_test])):
        # (`vaelab evaluate RUN --nll exact,iwae --k K` on the same images and weights is reused as it is)
        likelihood = evaluate_run(run_dir, data=data, device="cpu", nll="exact,iwae", k=iwae_k,
                                  nll_images=nll_images, iwae_images=iwae_images, log=lambda _: None,
                                  bar=False)["likelihood"]
    # IWAE (and the −ELBO) may use fewer test images than the exact NLL: this is the exact NLL on theirs, so
    # that the bound can be read against the likelihood it bounds
    scores = {"valid_exact_nll": valid_nll, "test_exact_nll": likelihood["exact"]["nll"],
              "test_exact_nll_iwae_images": likelihood["posterior_gap"]["exact_nll_on_these_images"],
              "test_iwae": likelihood["iwae"]["nll"], "iwae_k": iwae_k,
              "test_neg_elbo": likelihood["elbo"]["neg_elbo"]}
    cache.write_text(json.dumps({"key": key, "scores": scores}, indent=1))
    return scores


def trained(runs: list[tuple], *, data, data_dir: str | None, workers: int) -> dict[Path, str]:
    """Make every run of `runs` a finished run (reused, resumed or trained), in this process or `workers` at a
    time in worker processes; returns the failed ones (run dir -> error). Ctrl-C stops them all, each run
    keeping its last checkpoint, and the same command continues them."""
    interrupted = "interrupted (each run keeps its last checkpoint); the same command continues them"
    failed = {}

    def fail(run_dir: Path, error: str) -> None:
        failed[run_dir] = error
        print(f"  {run_dir.name}: failed: {error}", flush=True)

    if workers == 1:
        for _, _, _, spec, run_dir in runs:
            try:
                ensure_run(spec, run_dir, data=data, device="cpu")
            except TrainingInterrupted:
                sys.exit(interrupted)
            except Exception as e:  # reported under the others' table, as the workers' failures are
                fail(run_dir, f"{type(e).__name__}: {e}")
        return failed
    todo = []  # a finished run is reused here, not in a worker that loads the data first
    for _, _, _, spec, run_dir in runs:
        try:
            if finished(spec, run_dir):
                continue
        except ReproduceError as e:
            fail(run_dir, f"{type(e).__name__}: {e}")
            continue
        todo.append((spec, run_dir))
    jobs = [(spec, str(run_dir), data_dir, False, "cpu", executors.threads_per_job(workers)) for spec, run_dir in todo]
    try:
        for i, (status, value) in executors.processes(train_job, jobs, workers):
            run_dir = todo[i][1]
            if status == "ok":
                print(f"  {run_dir.name}: {value['what']} ({value['seconds']:.0f} s)", flush=True)
            else:
                fail(run_dir, str(value))
    except KeyboardInterrupt:
        sys.exit(interrupted)
    return failed


def finished(spec: RunSpec, run_dir: Path) -> bool:
    """Whether `run_dir` holds a finished run of `spec`; ReproduceError if it holds one made with other settings."""
    if not (run_dir / CONFIG_FILE).exists():
        return False
    check_existing(spec, run_dir)
    return is_complete(spec, run_dir)


def own_record(run: tuple, *, asked: bool, data, settings: dict) -> dict | None:
    """The table's row for a run of this study in OUT: scored now if it was asked for, else only if finished
    and already scored with these settings (`settings`: nll_images, iwae_k, iwae_images); else None."""
    d, seed, name, spec, run_dir = run
    try:
        if not asked and not finished(spec, run_dir):
            return None
    except ReproduceError:  # a run of other settings: not this study's
        return None
    scores = scored(run_dir, data=data, **settings, saved_only=not asked)
    if scores is None:
        return None
    # the run's own epoch times (timing.jsonl): also right for a run trained by an earlier call
    timing = (run_dir / "timing.jsonl").read_text().splitlines()
    seconds = sum(json.loads(line)["seconds"] for line in timing)
    return {"latent_dim": d, "variant": name, "seed": seed, **scores, **settings, "train_images": spec.train_images,
            "cpu": cpu_model(), "train_seconds": round(seconds, 1), "config": spec.config.to_dict()}


# what a row of results.json must hold to join another part's table
ROW_KEYS = ("latent_dim", "variant", "seed", "valid_exact_nll", "test_exact_nll", "test_exact_nll_iwae_images",
            "test_iwae", "test_neg_elbo", "iwae_k", "nll_images", "iwae_images", "train_images", "cpu",
            "train_seconds", "config")


def read_included(paths: list[str]) -> list[tuple[str, list[dict]]]:
    """(path, rows) of each earlier results.json; ValueError naming the file if one cannot be read as one."""
    out = []
    for path in paths:
        try:
            rows = json.loads(Path(path).read_text())["rows"]
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise TypeError("rows is not a list of objects")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--include {path}: not a results.json of this study ({type(e).__name__}: {e})") from None
        out.append((path, rows))
    return out


def same_config(saved: dict, config: RunConfig) -> bool:
    """Whether a row's saved config is `config`; a field the row lacks (added to RunConfig since) counts as
    its default, which keeps the behaviour of before. The preset's name is a label, not a setting (a latent-1
    recipe run was labelled z2-best before z1-best was its name), so it is not compared."""
    default, wanted = (json.loads(json.dumps(c.to_dict())) for c in (RunConfig(), config))
    return all(saved.get(name, default[name]) == value for name, value in wanted.items() if name != "preset")


def included(files: list[tuple[str, list[dict]]], grid: list[tuple], settings: dict) -> dict[tuple, dict]:
    """(latent dim, variant, seed) -> the row of an earlier results.json whose run had this study's settings
    (its config and training images) and was scored as this call scores (`settings`); says per file how many
    rows joined and why the others did not. A later file's row takes the place of an earlier file's."""
    wanted = {(d, name, seed): spec for d, seed, name, spec, _ in grid}
    rows = {}
    for path, file_rows in files:
        skipped: Counter = Counter()
        for row in file_rows:
            missing = [k for k in ROW_KEYS if k not in row]
            if missing:
                skipped[f"no {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''} (an older format)"] += 1
                continue
            key = (row["latent_dim"], row["variant"], row["seed"])
            spec = wanted.get(key)
            if spec is None:
                skipped["a latent size, variant or seed this call does not table"] += 1
            elif any(row[k] != v for k, v in settings.items()):
                skipped["scored with other settings (--nll-images, --iwae-k, --iwae-images)"] += 1
            elif not same_config(row["config"], spec.config) or row["train_images"] != spec.train_images:
                skipped["trained with other settings"] += 1
            else:
                rows[key] = {k: v for k, v in row.items() if k != "chosen_on_validation"}
        why = "; ".join(f"{n} {reason}" for reason, n in skipped.items())
        print(f"--include {path}: {len(file_rows) - sum(skipped.values())} of {len(file_rows)} rows join the table"
              f"{f' (left out: {why})' if why else ''}")
    return rows


def mean_sd(values: list[float]) -> str:
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def parse_seeds(text: str) -> range:
    """'3' -> seeds 0, 1, 2; '1-2' -> seeds 1, 2."""
    first, dash, last = text.partition("-")
    try:
        seeds = range(int(first), int(last) + 1) if dash else range(int(first))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or A-B, got {text!r}") from None
    if not seeds or seeds.start < 0:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}")
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs per run [default: the recipe's "
                        f"{PRESETS[RECIPE]['epochs']}; quick: {QUICK['epochs']}]")
    parser.add_argument("--seeds", type=parse_seeds, default=None, help="N: seeds 0..N-1; A-B: seeds A to B (a study "
                        f"run in parts; the table lists seeds 0..B) [default: 3; quick: {QUICK['seeds']}]")
    parser.add_argument("--latent-dims", default="1,2")
    parser.add_argument("--quick", action="store_true", help="the pipeline in minutes: 1 seed, 2 epochs, the first "
                        f"{QUICK_TRAIN_IMAGES} training images, IWAE_{QUICK['iwae_k']} on {QUICK['iwae_images']} "
                        f"and exact NLL on {QUICK['nll_images']} images")
    parser.add_argument("--iwae-k", type=int, default=None, help="IWAE samples per test image [default: 5000]")
    parser.add_argument("--iwae-images", type=int, default=None, help="IWAE on the first N test images [default: all]")
    parser.add_argument("--nll-images", type=int, default=None, help="exact NLL on the first N validation and test "
                        "images [default: all]")
    parser.add_argument("--variants", default=None, help="only these variants, comma-separated (e.g. recipe or "
                        "'recipe,- iwae'); the table lists those and the others' runs already scored [default: all]")
    parser.add_argument("--hidden", default=None, help="encoder widths, e.g. 512,256 [default: the recipe's]")
    parser.add_argument("--batch-size", type=int, default=None, help="[default: the recipe's]")
    parser.add_argument("--out", default="study", help="runs go to OUT/runs; results.{json,md} to OUT")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--valid-size", type=int, default=RunConfig.valid_size)
    parser.add_argument("--include", nargs="+", default=[], metavar="RESULTS_JSON", help="the rows of earlier "
                        "results.json files (another session's or machine's part of the study, say one kept under "
                        "benchmarks/results/) join the table where their run's settings and scoring are these; "
                        "a run in OUT takes the place of the same run there")
    parser.add_argument("--workers", type=int, default=1, help="train N runs at a time, each in its own process "
                        "with its share of the cores [default: 1, in this process]")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    quick = args.quick
    epochs = args.epochs if args.epochs is not None else QUICK["epochs"] if quick else PRESETS[RECIPE]["epochs"]
    seeds = args.seeds or range(QUICK["seeds"] if quick else 3)
    iwae_k = args.iwae_k or (QUICK["iwae_k"] if quick else 5000)
    iwae_images = args.iwae_images or (QUICK["iwae_images"] if quick else None)
    nll_images = args.nll_images or (QUICK["nll_images"] if quick else None)
    overrides = {"hidden": parse_hidden(args.hidden)} if args.hidden else {}
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    latent_dims = [int(d) for d in args.latent_dims.split(",")]
    chosen_variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
    unknown = set(chosen_variants or ()) - set(variants(epochs))
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(variants(epochs))}")
    try:
        include = read_included(args.include)
    except ValueError as e:
        parser.error(str(e))
    out = Path(args.out)
    started = time.perf_counter()

    data = load_data(RunConfig(valid_size=args.valid_size), args.data_dir)
    print(f"{cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads")
    names = ", ".join(f"{recipe_preset(d) or 'unnamed'} at latent {d}" for d in latent_dims)
    settings = {k: v for k, v in PRESETS[RECIPE].items() if k != "latent_dim"}
    print(f"recipe ({names}) = {settings}; {epochs} epochs, seeds {list(seeds)}, latent {latent_dims}; "
          f"{QUICK_TRAIN_IMAGES if quick else len(data.train)} training images; test IWAE_{iwae_k}; "
          f"{args.workers} worker(s)")
    # seeds below those asked are listed when an earlier call finished them, and so are --include's rows
    last_seed = max([seeds[-1], *(r["seed"] for _, rows in include for r in rows if isinstance(r.get("seed"), int))])
    grid = []  # (latent dim, seed, variant, spec, run dir) of the whole study, latent- then seed-major
    for d in latent_dims:
        for seed in range(last_seed + 1):
            for name, config in configs(latent_dim=d, seed=seed, epochs=epochs, valid_size=args.valid_size,
                                        **overrides).items():
                spec = RunSpec(config, QUICK_TRAIN_IMAGES if quick else None)
                grid.append((d, seed, name, spec, out / "runs" / f"{name.replace('- ', 'no-')}-z{d}-s{seed}"))
    runs = [run for run in grid if (not chosen_variants or run[2] in chosen_variants) and run[1] in seeds]
    failed = trained(runs, data=data, data_dir=args.data_dir, workers=args.workers)
    settings = {"nll_images": nll_images, "iwae_k": iwae_k, "iwae_images": iwae_images}
    earlier = included(include, grid, settings)

    # The table: the runs asked for, and the study's other runs that an earlier call (say for other
    # --variants) finished and scored with these settings, so that a study run in parts has one table.
    rows, choice_seeds = [], {}
    for d in latent_dims:
        per_variant: dict[str, list[dict]] = {}
        for run in grid:
            run_d, seed, name, spec, run_dir = run
            if run_d != d:
                continue
            # a run that failed here keeps the row an included file has of it (its failure is reported below)
            record = None if run_dir in failed else own_record(run, asked=run in runs, data=data, settings=settings)
            record = record or earlier.get((d, name, seed))
            if record is None:
                continue
            per_variant.setdefault(name, []).append(record)
            rows.append(record)
            print(f"  z={d} {name:10} seed {seed}: valid NLL {record['valid_exact_nll']:.2f}, test NLL "
                  f"{record['test_exact_nll']:.2f}, IWAE {record['test_iwae']:.2f}, -ELBO "
                  f"{record['test_neg_elbo']:.2f} ({record['train_seconds']:.0f} s; {record['cpu']})", flush=True)
        if not per_variant:
            continue
        # chosen on the seeds every variant has (a study in parts may have more seeds of some); with none in
        # common, means over different seeds would compare seeds as much as variants: none is chosen
        shared = set.intersection(*({r["seed"] for r in records} for records in per_variant.values()))
        chosen = min(per_variant, key=lambda v: statistics.mean(
            r["valid_exact_nll"] for r in per_variant[v] if r["seed"] in shared)) if shared else None
        choice_seeds[d] = sorted(shared)
        for name, records in per_variant.items():
            for r in records:
                r["chosen_on_validation"] = name == chosen

    table = ["| latent | variant | valid exact NLL | test exact NLL | test exact NLL on IWAE's images | test IWAE_k "
             "| test -ELBO | train s/run | seeds |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for d in latent_dims:
        for name in variants(epochs):
            records = [r for r in rows if r["latent_dim"] == d and r["variant"] == name]
            if not records:
                continue
            mark = " (chosen on validation)" if records[0]["chosen_on_validation"] else ""
            cells = [mean_sd([r[key] for r in records]) for key in ("valid_exact_nll", "test_exact_nll",
                                                                    "test_exact_nll_iwae_images", "test_iwae",
                                                                    "test_neg_elbo")]
            table.append(f"| {d} | {name}{mark} | {' | '.join(cells)} | "
                         f"{statistics.mean(r['train_seconds'] for r in records):.0f} | {len(records)} |")
    total = time.perf_counter() - started
    cpus = Counter(r["cpu"] for r in rows)
    chosen_on = ", ".join(f"latent {d}: seeds {', '.join(map(str, shared))}" if shared else
                          f"latent {d}: no seed shared, none chosen"
                          for d, shared in choice_seeds.items())
    footer = (f"nats per image, mean ± sd over a row's seeds; chosen on validation over the seeds all variants have "
              f"({chosen_on}); IWAE_k with k = {iwae_k}; runs scored on "
              f"{', '.join(f'{cpu} ({n})' for cpu, n in cpus.items()) or 'none'}; this call on {cpu_model()}, "
              f"{os.cpu_count()} cores; total wall time {total:.0f} s")
    print("\n".join(["", *table, "", footer]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join([*table, "", footer, ""]))
    (out / "results.json").write_text(json.dumps({"cpu": cpu_model(), "cores": os.cpu_count(),
                                                  "torch": torch.__version__, "wall_seconds": round(total, 1),
                                                  "rows": rows}, indent=1))
    if failed:
        for run_dir, error in failed.items():
            print(f"failed: {run_dir.name}: {error}", file=sys.stderr)
        sys.exit(f"{len(failed)} of {len(runs)} runs failed (in the table only where an included file has them); "
                 "the others are kept: the same command trains the failed ones again")


if __name__ == "__main__":
    main()
