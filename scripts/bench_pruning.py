"""The same Optuna search on digits without a pruner and with the median pruner: what pruning saves.

    python scripts/bench_pruning.py                          # 20 trials of 8 epochs each, then the same with pruner=median
    python scripts/bench_pruning.py --trials 10 --epochs 5   # a quicker look
    python scripts/bench_pruning.py --seeds 3                # also retrain the unpruned search's best trial with 3 seeds

Each search is one real `python -m trainer -m hparams_search=optuna` command (the search space of
conf/hparams_search/optuna.yaml, TPE with the same sampler seed, Hydra's basic launcher), run one after
the other in fresh sweep directories under --out. For each it prints the wall time of the command, the
epochs trained (the sum of every job's epochs_run), the trials pruned, and the best value of the study
(Optuna's best trial: only trials that ran to their end). With --seeds N, the unpruned search's best
trial is trained again with N seeds, and the spread of its best values (mean and sample std) tells how
far apart two best values may be by chance alone. After the startup trials, TPE sees different
histories in the two searches (pruned trials report less), so they suggest different trials: the
best values differ by the search as well as by the pruning.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def trainer(args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=cwd, env=env, capture_output=True, text=True)


def run_search(out: Path, name: str, trials: int, epochs: int, pruner: str, extra) -> dict:
    sweep_dir = out / name
    args = ["-m", "hparams_search=optuna", f"hydra.sweeper.n_trials={trials}", f"trainer.max_epochs={epochs}",
            f"hydra.sweeper.pruner={pruner}", "progress=false", f"hydra.sweep.dir={sweep_dir}", *extra]
    started = time.perf_counter()
    result = trainer(args, out)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{name} search failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="trainer", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    summaries = [json.loads((sweep_dir / str(t.number) / "summary.json").read_text()) for t in study.trials]
    states = [t.state.name for t in study.trials]
    return {
        "search": name, "pruner": pruner, "trials": len(study.trials), "seconds": seconds,
        "epochs": sum(s["epochs_run"] for s in summaries), "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"), "best_value": study.best_value, "best_trial": study.best_trial.number,
        "best_params": study.best_trial.params, "monitor": summaries[0]["monitor"],
    }


def seed_spread(out: Path, params: dict, epochs: int, seeds: int, extra) -> dict:
    """The best values of one configuration trained with `seeds` seeds (a plain sweep over seed)."""
    sweep_dir = out / "seeds"
    overrides = [f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}" for key, value in params.items()]
    args = ["-m", f"seed={','.join(str(s) for s in range(seeds))}", f"trainer.max_epochs={epochs}", "progress=false",
            f"hydra.sweep.dir={sweep_dir}", *overrides, *extra]
    result = trainer(args, out)
    if result.returncode != 0:
        raise SystemExit(f"seed sweep failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    values = [json.loads((sweep_dir / str(i) / "summary.json").read_text())["best_value"] for i in range(seeds)]
    return {"values": values, "mean": statistics.fmean(values), "std": statistics.stdev(values) if seeds > 1 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=0, help="retrain the unpruned best trial with this many seeds (0: no)")
    parser.add_argument("--out", default="outputs/bench_pruning", help="where the sweep directories go (replaced)")
    parser.add_argument("overrides", nargs="*", help="more overrides for every run, e.g. hydra.sweeper.median.n_warmup_steps=1")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    results = [run_search(out, pruner, args.trials, args.epochs, pruner, args.overrides) for pruner in ("none", "median")]
    for r in results:
        print(f"{r['pruner']:>6}: {r['trials']} trials in {r['seconds']:.0f} s, {r['epochs']} epochs trained, "
              f"{r['pruned']} pruned, {r['failed']} failed; best {r['monitor']} {r['best_value']:.4f} (trial {r['best_trial']})")
    none, median = results
    print(f"median / none: epochs {median['epochs'] / none['epochs']:.2f}, wall time {median['seconds'] / none['seconds']:.2f}, "
          f"best value {median['best_value'] - none['best_value']:+.4f}")
    report = {"trials": args.trials, "epochs": args.epochs, "overrides": args.overrides, "searches": results}
    if args.seeds > 1:
        spread = seed_spread(out, none["best_params"], args.epochs, args.seeds, args.overrides)
        print(f"the unpruned best trial over {args.seeds} seeds: mean {spread['mean']:.4f}, std {spread['std']:.4f} "
              f"({', '.join(f'{v:.4f}' for v in spread['values'])})")
        report["seed_spread"] = spread
    (out / "bench_pruning.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'bench_pruning.json'}")


if __name__ == "__main__":
    main()
