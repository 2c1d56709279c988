"""The README's shell commands, run as written and in order, in a fresh copy of the repository (slow).

Every line of a ```bash block in README.md is a command (comments aside). Each runs through bash in
a temporary copy of the repository (the files git knows: tracked, or new and not ignored), with the
project's virtual environment first on PATH, so `python`, `torchrun` and `trainer` are what the
README's quickstart installs. A command passes when it exits 0, unless a list below says otherwise:
EXPECTED_ERRORS holds commands that cannot succeed here and must fail the documented way (one line
on stderr), SKIPPED the commands that cannot run here at all, each with its reason. Nothing is left
out silently: a command is run unless it is listed, and an entry the README no longer holds fails
the test, so the lists cannot go stale. A ``` block that starts with `$ command` is a transcript: the
command runs and its stderr must be the lines shown.

Placeholders such as `outputs/<run>` are filled, in README order, with the directory of a run an
earlier command made (PLACEHOLDERS says which); an unknown placeholder fails the test.
"""

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import yaml

from conftest import REPO

VENV_BIN = REPO / ".venv" / "bin"
COMMAND_TIMEOUT = 600  # seconds, per command: a command that hangs (waiting for a peer, a cluster) fails, not blocks

# Commands that cannot run on this machine, with the reason. Each is the README line exactly, less its comment.
SKIPPED: Dict[str, str] = {
    # a fresh virtual environment and an install from PyPI; the tree under test uses the project's .venv,
    # and the run it ends with is the default run, which the cookbook's runs cover
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python -m trainer":
        "creates a virtual environment and installs from PyPI",
    # the same install, then the whole test suite, which holds this test
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest":
        "installs from PyPI and runs the whole suite (this test among it)",
    "torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=node0:29500 --rdzv-id=run42 -m trainer":
        "needs a second machine (node0) to meet at the rendezvous",
    # benchmarks: minutes each on this machine, and their figures are measured by hand for the README
    "python scripts/bench_engine.py": "a benchmark of several workloads, many minutes",
    "python scripts/bench_engine.py --workload tiny_cnn --repeats 120 --epochs 1": "a benchmark, 4 minutes",
    "python scripts/bench_engine.py --workload linear": "a benchmark, minutes",
    "python scripts/bench_engine.py --workload resnet50": "a benchmark meant for a GPU",
    "python scripts/bench_startup.py": "a benchmark of start-up times, repeated many times",
    "python scripts/bench_loader.py": "a benchmark, interleaved repeated epochs over 2,000 JPEGs",
    "python scripts/bench_metrics.py --threads 1 --sizes 50000x1000 --old-repeats 1": "a benchmark, minutes (the scikit-learn reference at 50,000 x 1,000)",
    "python scripts/bench_image_cache.py": "a benchmark, a generated folder and repeated epochs",
    "python scripts/bench_pipeline.py": "a benchmark, a generated folder of 60,000 images and epochs three ways (15 minutes)",
    "python scripts/bench_pipeline.py --jpeg": "a benchmark, a generated folder of 2,000 JPEGs and epochs three ways",
    "python scripts/bench_batch_augment.py": "a benchmark, interleaved repeats of two augmentation paths at three sizes",
    "python scripts/bench_pipeline.py --folders-only": "writes 70,000 images (about 2 minutes here)",
    "python -m trainer data=image_folder data.root=outputs/bench_pipeline/60000x28png/train data.val_root=outputs/bench_pipeline/60000x28png/val data.channels=1 trainer.max_epochs=3":
        "3 epochs over 60,000 images (about 2 minutes here); needs the folders of the command before",
    "python scripts/bench_checkpoints.py": "a benchmark, repeated resnet18 epochs with and without checkpoints",
    "python scripts/bench_pruning.py --trials 10 --epochs 4 trainer.limit_train_batches=5 hydra.sweeper.median.n_startup_trials=3":
        "a benchmark: two 10-trial searches",
}

# Commands that cannot succeed here and must fail with one line on stderr, `error: ...` matching the pattern.
EXPECTED_ERRORS: Dict[str, str] = {
    # no network (the test sets HF_HUB_OFFLINE=1 as the suite does): timm cannot download the weights
    "python -m trainer model=timm model.name=resnet18 model.pretrained=true": r"pretrained",
    # no SLURM cluster here
    "python -m trainer -m hydra/launcher=slurm hydra.launcher.partition=gpu loss=ce,focal": r"(?i)slurm",
}


def run_config(run_dir: Path) -> dict:
    try:
        return yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def has_best(run_dir: Path) -> bool:
    return (run_dir / "checkpoints" / "best.ckpt").is_file()


def in_sweep(run_dir: Path) -> bool:
    return (run_dir.parent / "multirun.yaml").is_file()


def default_model_run(run_dir: Path) -> bool:
    cfg = run_config(run_dir)
    return (has_best(run_dir) and not in_sweep(run_dir) and cfg.get("task") == "classification"
            and cfg.get("data", {}).get("name") == "digits" and cfg.get("model", {}).get("name") == "cnn")


def image_run(run_dir: Path) -> bool:
    data = run_config(run_dir).get("data", {}).get("name")
    return has_best(run_dir) and not in_sweep(run_dir) and data in ("image_folder", "csv")


# placeholder -> (what fills it, which earlier runs qualify); the latest qualifying single run fills it
PLACEHOLDERS: Dict[str, Tuple[str, Callable[[Path], bool]]] = {
    "outputs/<run>": ("a run of the default data and model (digits, cnn, classification)", default_model_run),
    "outputs/<image run>": ("a run on image files (data=image_folder or data=csv)", image_run),
}
PLACEHOLDER = re.compile(r"<[A-Za-z][\w -]*>")


def unknown_placeholders(command: str) -> List[str]:
    for placeholder in PLACEHOLDERS:
        command = command.replace(placeholder, "")
    return PLACEHOLDER.findall(command)


def code_blocks(text: str) -> List[Tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def bash_commands(text: str) -> List[str]:
    """Each line of the ```bash blocks (continuations joined), without its comment: what the lists name."""
    commands = []
    for language, body in code_blocks(text):
        if language == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                command = without_comment(line).strip()
                if command:
                    commands.append(command)
    return commands


def transcripts(text: str) -> List[Tuple[str, List[str]]]:
    """(command, the output lines shown) of the plain blocks that start with `$ `."""
    found = []
    for language, body in code_blocks(text):
        lines = body.rstrip("\n").splitlines()
        if not language and lines and lines[0].startswith("$ "):
            found.append((lines[0][2:].strip(), lines[1:]))
    return found


def without_comment(command: str) -> str:
    """The command before its shell comment (a # that starts a word outside quotes)."""
    quote = None
    for i, char in enumerate(command):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i]
    return command


def repository_copy(dest: Path) -> None:
    """The files git lists (tracked, or untracked and not ignored), as a user's fresh clone would hold them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, check=True,
        capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file someone deleted is not in the tree
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)


def run_dirs(root: Path) -> List[Path]:
    outputs = root / "outputs"
    found = [p.parent for p in outputs.rglob(".hydra")] if outputs.is_dir() else []
    return sorted(found, key=lambda run: ((run / ".hydra").stat().st_mtime, str(run)))  # made first, first


class Readme:
    """Runs the commands in order in one copy of the repository and keeps what each made."""

    def __init__(self, root: Path):
        self.root = root
        self.runs: List[Path] = []  # in the order the commands made them
        self.readme = (REPO / "README.md").read_text()
        self.last_command = ""
        self.env = dict(os.environ)
        self.env.pop("HYDRA_FULL_ERROR", None)
        self.env.pop("VIRTUAL_ENV", None)
        self.env.update(
            PATH=os.pathsep.join([str(VENV_BIN), self.env.get("PATH", "")]),
            PYTHONPATH=str(root),  # the copy's package, also for the `trainer` console script
            HF_HUB_OFFLINE="1",  # as the rest of the suite: never online
            COLUMNS="120",
        )

    def fill(self, command: str) -> str:
        for placeholder, (meaning, qualifies) in PLACEHOLDERS.items():
            if placeholder in command:
                matching = [run for run in self.runs if qualifies(run)]
                if not matching:
                    raise AssertionError(f"no earlier command made {meaning}, for {placeholder}")
                command = command.replace(placeholder, str(matching[-1].relative_to(self.root)))
        unknown = unknown_placeholders(command)
        if unknown:
            raise AssertionError(f"unknown placeholder {unknown}: add it to PLACEHOLDERS in {Path(__file__).name}")
        return command

    def run(self, command: str) -> Tuple[subprocess.CompletedProcess, float, List[Path]]:
        """The command's result, its seconds, and the run directories it made."""
        before = set(run_dirs(self.root))
        self.last_command = command
        started = time.monotonic()
        result = subprocess.run(
            ["bash", "-c", command], cwd=self.root, env=self.env, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT,
        )
        made = [run for run in run_dirs(self.root) if run not in before]
        self.runs += made
        return result, time.monotonic() - started, made


def listed_files(text: str, header: str) -> List[Tuple[str, str]]:
    """(name, description) of each entry of the README's file listing whose first line is `header`."""
    for language, body in code_blocks(text):
        lines = body.splitlines()
        if not language and lines and lines[0].strip() == header:
            entries = [line for line in lines[1:] if re.match(r"  \S", line)]  # deeper lines continue the text
            return [tuple((line.split(None, 1) + [""])[:2]) for line in entries]
    raise AssertionError(f"README.md has no file listing starting with {header!r}")


def check_listing(text: str, header: str, directory: Path) -> List[str]:
    """Entries of a README listing missing from `directory` (those said to appear only `with`/`when` aside)."""
    return [f"{header} lists {name}, not in {directory}" for name, description in listed_files(text, header)
            if not description.startswith(("with ", "when ")) and not (directory / name).exists()]


def lr_preview_writes_under_outputs(session: "Readme", result: subprocess.CompletedProcess, new_runs) -> List[str]:
    """The picture goes under outputs/ (not into the current directory), and the command says where."""
    pictures = list((session.root / "outputs").rglob("lr_schedule.png"))
    if (session.root / "lr_schedule.png").exists() or not pictures:
        return [f"lr_schedule.png not under outputs/: {[str(p) for p in pictures]}"]
    named = any(str(p) in result.stdout or str(p.relative_to(session.root)) in result.stdout for p in pictures)
    return [] if named else ["the output does not say where lr_schedule.png is"]


def completion_works(session: "Readme", result: subprocess.CompletedProcess, new_runs) -> List[str]:
    """`eval "$(...)"` exits 0 even when the inner command fails: ask the installed completion itself, as
    bash does on <TAB> (COMP_LINE, COMP_POINT), whether `trainer loss=fo` completes to loss=focal."""
    line = "trainer loss=fo"
    check = (f'{session.last_command}\ncomplete -p trainer >/dev/null || exit 1\n'
             f'COMP_LINE="{line}" COMP_POINT={len(line)} trainer -sc query=bash')
    asked = subprocess.run(["bash", "-c", check], cwd=session.root, env=session.env, capture_output=True, text=True,
                           timeout=120)
    if asked.returncode != 0 or "loss=focal" not in asked.stdout.split():
        return [f"no completion installed for trainer, or {line!r} does not complete to loss=focal: {asked}"]
    return []


def composes_without_running(session: "Readme", result: subprocess.CompletedProcess, new_runs) -> List[str]:
    problems = [] if "gamma:" in result.stdout else ["no loss.gamma in the printed config"]
    return problems + ([f"made run directories {new_runs}"] if new_runs else [])


def evaluate_writes_listed_files(session: "Readme", result: subprocess.CompletedProcess, new_runs) -> List[str]:
    """The files of "What evaluate writes" (the block of `<dir>/...` lines) are beside the checkpoint."""
    ckpt_dir = session.root / Path(re.search(r"ckpt_path=(\S+)", session.last_command).group(1)).parent
    names = [line.split()[0] for language, body in code_blocks(session.readme) if not language
             for line in body.splitlines() if line.startswith("<dir>/")]
    if not names:
        return ["README.md lists no `<dir>/...` files for evaluate"]
    return [f"{name} not written into {ckpt_dir}" for name in names if not (ckpt_dir / name[len("<dir>/"):]).exists()]


def predicts_every_image(session: "Readme", result: subprocess.CompletedProcess, new_runs) -> List[str]:
    """One row per validation image written by scripts/make_digit_images.py (every 5th of 1,797)."""
    output = session.root / re.search(r"output=(\S+)", session.last_command).group(1)
    rows = output.read_text().splitlines()[1:] if output.is_file() else []
    return [] if len(rows) == len(range(0, 1797, 5)) else [f"{output} has {len(rows)} rows, not 360"]


# More than the exit status, for some commands: a function(session, result, runs it made) -> problems.
def submission_follows_the_sample(session: "Readme", result: subprocess.CompletedProcess, new_runs) -> List[str]:
    """outputs/submission.csv: the sample submission's header and ids, in its order, and a class per row."""
    sample = (session.root / "outputs/digit_images/sample_submission.csv").read_text().splitlines()
    written = (session.root / "outputs/submission.csv").read_text().splitlines()
    ids = [line.split(",")[0] for line in written]
    problems = [] if ids == [line.split(",")[0] for line in sample] else ["outputs/submission.csv: not the sample's ids in its order"]
    if written[0] != sample[0] or any(line.split(",")[1] not in [str(d) for d in range(10)] for line in written[1:]):
        problems.append("outputs/submission.csv: not the sample's columns, or a label that is no class")
    return problems


def folds_cover_the_training_set(session: "Readme", result: subprocess.CompletedProcess, new_runs) -> List[str]:
    """outputs/cv5/oof_predictions.csv: every training image once, and cv_summary.json beside it."""
    oof = (session.root / "outputs/cv5/oof_predictions.csv").read_text().splitlines()[1:]
    train = sorted(p for p in (session.root / "outputs/digit_images/train").rglob("*.png"))
    problems = [] if len(oof) == len(train) == len({line.split(",")[0] for line in oof}) else [
        f"oof_predictions.csv: {len(oof)} rows for {len(train)} training images"]
    if not (session.root / "outputs/cv5/cv_summary.json").is_file():
        problems.append("outputs/cv5/cv_summary.json was not written")
    return problems


CHECKS: Dict[str, Callable] = {
    'eval "$(trainer -sc install=bash)"': completion_works,
    "python -m trainer.lr_preview scheduler=cosine scheduler.warmup_epochs=2": lr_preview_writes_under_outputs,
    "python -m trainer --cfg job loss=focal": composes_without_running,
    "python -m trainer.evaluate ckpt_path=outputs/<run>/checkpoints/best.ckpt": evaluate_writes_listed_files,
    "python -m trainer.predict ckpt_path=outputs/<image run>/checkpoints/best.ckpt input=outputs/digit_images/val "
    "output=predictions.csv": predicts_every_image,
    "python -m trainer -m data=image_folder data.root=outputs/digit_images/train data.channels=1 trainer.max_epochs=3 "
    "data.folds=5 'data.fold=range(5)' hydra.sweep.dir=outputs/cv5": folds_cover_the_training_set,
    "python -m trainer.predict ckpt_path=outputs/cv5 input=outputs/digit_images/test.csv path_column=file "
    "id_values=column input_id_column=id tta=flip+shift sample_submission=outputs/digit_images/sample_submission.csv "
    "output=outputs/submission.csv": submission_follows_the_sample,
}


def one_error_line(result: subprocess.CompletedProcess, pattern: str) -> Optional[str]:
    """Why the result is not the documented failure (None when it is)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.returncode == 0:
        return "exited 0, expected an error"
    if len(lines) != 1 or not lines[0].startswith("error: ") or not re.search(pattern, lines[0]):
        return f"expected one line `error: ...` matching {pattern!r} on stderr (exit {result.returncode})"
    return None


def test_lists_name_readme_commands_and_placeholders_are_known():
    """Fast: what the slow test relies on before running anything."""
    commands = bash_commands((REPO / "README.md").read_text())
    assert len(commands) > 40, "the README's ```bash blocks were not found"
    stale = sorted((set(SKIPPED) | set(EXPECTED_ERRORS) | set(CHECKS)) - set(commands))
    assert not stale, f"listed in {Path(__file__).name} but no longer in README.md: {stale}"
    for command in commands:
        unknown = unknown_placeholders(command)
        assert not unknown, f"{command}: unknown placeholder {unknown}; add it to PLACEHOLDERS"


@pytest.mark.slow
def test_commands_run_as_written(tmp_path):
    readme = (REPO / "README.md").read_text()
    commands = bash_commands(readme)

    root = tmp_path / "repo"
    repository_copy(root)
    session = Readme(root)
    failures, timings = [], []
    for command in commands:
        if command in SKIPPED:
            timings.append(f"skipped    {command}  ({SKIPPED[command]})")
            continue
        try:
            filled = session.fill(command)
        except AssertionError as error:
            failures.append(f"{command}\n    {error}")
            continue
        try:
            result, seconds, made = session.run(filled)
        except subprocess.TimeoutExpired:
            failures.append(f"{filled}\n    still running after {COMMAND_TIMEOUT} s")
            continue
        if command in EXPECTED_ERRORS:
            problems = list(filter(None, [one_error_line(result, EXPECTED_ERRORS[command])]))
        elif result.returncode != 0:
            problems = [f"exit {result.returncode}"]
        else:
            problems = CHECKS.get(command, lambda *_: [])(session, result, made)
        timings.append(f"{seconds:7.1f} s  {'FAILED' if problems else 'ok':6}  {command}")
        print(timings[-1], flush=True)  # with -s: progress, in a run that takes many minutes
        if problems:
            failures.append(f"{filled}\n    " + "\n    ".join(problems)
                            + f"\n    stdout: {result.stdout[-500:]}\n    stderr: {result.stderr[-1500:]}")
            print(failures[-1], flush=True)
    for command, shown in transcripts(readme):
        result, seconds, _ = session.run(session.fill(command))
        timings.append(f"{seconds:7.1f} s  $ {command}")
        if result.stderr.splitlines() != shown:
            failures.append(f"$ {command}\n    stderr {result.stderr.splitlines()} is not README.md's {shown}")
    # "What a run writes": the first run of the default model; a sweep's files: the first sweep
    single = [run for run in session.runs if default_model_run(run)]
    sweeps = list(dict.fromkeys(run.parent for run in session.runs if in_sweep(run) and "multirun" in run.parts))
    failures += check_listing(readme, "outputs/<date>/<time>/", single[0]) if single else ["no single run made"]
    failures += check_listing(readme, "outputs/multirun/<date>/<time>/", sweeps[0]) if sweeps else ["no sweep made"]
    print("\n".join(timings))
    assert not failures, f"{len(failures)} README command(s) did not do as documented:\n" + "\n".join(failures)
