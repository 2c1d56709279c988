"""Start-up time of the command line, and peak memory of a digits run and of evaluate.

    python scripts/bench_startup.py

Start-up: `python -m trainer --help`, `--cfg job` and a tab-completion query (`trainer -sc query=bash`,
as the shell asks it) must answer without importing torch, timm, scikit-learn, mlflow or wandb; each is timed over
several runs (median), next to the time of importing those libraries.
Memory: the maximum resident set size (getrusage) of `python -m trainer` on the default digits
config and of `python -m trainer.evaluate` on its best checkpoint.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "sklearn", "mlflow", "wandb")


def env(**extra):
    e = dict(os.environ, HF_HUB_OFFLINE="1", **extra)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    return e


def median_seconds(args, repeats, cwd, command=(sys.executable,), **extra_env):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([*command, *args], cwd=cwd, env=env(**extra_env), check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def heavy_imports(args, cwd, **extra_env):
    code = (
        "import runpy, sys\n"
        f"sys.argv = {['trainer', *args]!r}\n"
        "try:\n    runpy.run_module('trainer', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env(**extra_env), capture_output=True, text=True, check=True)
    return out.stdout.rsplit("HEAVY:", 1)[1].strip()


def peak_rss_mib(args, cwd):
    """Peak resident memory of one run of `python -m <args[0]> <args[1:]>`, read by the process itself at exit."""
    code = (
        "import resource, runpy, sys\n"
        f"sys.argv = {args!r}\n"
        "try:\n    runpy.run_module(sys.argv[0], run_name='__main__')\nfinally:\n"
        "    print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env(), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    kib = int(out.stderr.rsplit("MAXRSS", 1)[1].split()[0])
    return kib / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        libraries = median_seconds(["-c", "import torch, timm, sklearn.metrics, hydra, rich"], args.repeats, tmp)
        print(f"import torch, timm, scikit-learn, hydra, rich: {libraries:.2f} s (median of {args.repeats})")
        for extra in (["--help"], ["--cfg", "job"], ["--cfg", "job", "loss=focal", "scheduler=cosine"]):
            seconds = median_seconds(["-m", "trainer", *extra], args.repeats, tmp)
            loaded = heavy_imports(extra, tmp) or "none"
            print(f"python -m trainer {' '.join(extra)}: {seconds:.2f} s (median of {args.repeats}); heavy modules imported: {loaded}")
        command = Path(sys.executable).with_name("trainer")  # installed by pip install -e .
        line = "trainer scheduler=cosine scheduler.t_"
        completion = dict(COMP_LINE=line, COMP_POINT=str(len(line)))
        seconds = median_seconds(["-sc", "query=bash"], args.repeats, tmp, command=(str(command),), **completion)
        loaded = heavy_imports(["-sc", "query=bash"], tmp, **completion) or "none"
        print(f"tab completion ('{line}<TAB>'): {seconds:.2f} s (median of {args.repeats}); heavy modules imported: {loaded}")
        run_dir = Path(tmp) / "run"
        started = time.perf_counter()
        train_mib = peak_rss_mib(["trainer", f"hydra.run.dir={run_dir}", "progress=false"], tmp)
        train_s = time.perf_counter() - started
        eval_mib = peak_rss_mib(["trainer.evaluate", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"], tmp)
        summary = (run_dir / "summary.json").read_text()
        print(f"python -m trainer (default digits run): {train_s:.1f} s wall, peak RSS {train_mib:.0f} MiB")
        print(f"python -m trainer.evaluate (best.ckpt): peak RSS {eval_mib:.0f} MiB")
        print(f"default run summary: {' '.join(summary.split())}")


if __name__ == "__main__":
    main()
