"""What is done with the command line before Hydra reads it: resume redirection, an output-dir check,
unknown config keys, a SLURM launcher without SLURM.

Hydra creates the run directory before any of our code runs, so a directory that cannot be created
has to be caught here to end with one clear message instead of Hydra's traceback. The same holds for
keys: Hydra's answer to a misspelt key is "use +key=value to append", which adds the key, and a
key no builder reads is then silently unused; so keys under the trainer's own config are checked
against the schemas here, before anything is composed or created.
"""

import os
import re
import shutil
import sys
from typing import Dict, Iterable, List, Optional, Set

from trainer.config.options import SCHEMAS
from trainer.config.schema import COMMAND_SCHEMAS, CONF_DIR, TrainConfig
from trainer.engine.place import launched_by_torchrun
from trainer.engine.resume import checkpoint_of, run_dir_of


def value_of(argv: List[str], key: str):
    values = [arg.split("=", 1)[1] for arg in argv[1:] if arg.startswith(key + "=")]
    return values[-1] if values else None


def redirect_resumed_run(argv: List[str]) -> None:
    """Point Hydra at the resumed run's own directory (its .hydra/ is kept; the new one goes to .hydra/resumed)."""
    target = value_of(argv, "resume")
    if target == "auto":
        return redirect_auto_resume(argv)
    if target is None or value_of(argv, "hydra.run.dir") is not None or {"-m", "--multirun"} & set(argv):
        return
    checkpoint = checkpoint_of(target)
    if os.path.isfile(checkpoint):
        argv += [f"hydra.run.dir={run_dir_of(checkpoint)}", "hydra.output_subdir=.hydra/resumed"]


def redirect_auto_resume(argv: List[str]) -> None:
    """resume=auto continues the run in hydra.run.dir if it holds checkpoints/last.ckpt, else starts it there; a
    sweep's jobs each in their own job directory. A timestamped directory (the default) is new every time: refused."""
    if {"-m", "--multirun"} & set(argv):
        return
    run_dir = value_of(argv, "hydra.run.dir")
    if run_dir is None:
        refuse("resume=auto continues the run of a fixed run directory, and without hydra.run.dir each run gets a new "
               "timestamped one: add hydra.run.dir=<dir> (the same in every restart), or give resume=<run dir>")
    if os.path.isfile(os.path.join(run_dir, "checkpoints", "last.ckpt")):
        argv.append("hydra.output_subdir=.hydra/resumed")  # the run's own .hydra/ is kept


def output_dir_problem(argv: List[str]):
    """Why the run or sweep directory named on the command line (or ./outputs) cannot be written, or None."""
    if {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion", "-sc"} & set(argv):
        return None
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        target = value_of(argv, key)
        if target is not None:
            try:
                os.makedirs(target, exist_ok=True)
            except OSError as err:
                return f"{key}={target} cannot be created ({err.strerror}); choose a writable directory"
            if not os.access(target, os.W_OK):
                return f"{key}={target} is not writable; choose a writable directory"
            return None
    if not os.access(os.getcwd(), os.W_OK):
        return f"runs are written under ./outputs, but {os.getcwd()} is not writable; run from a writable directory or set hydra.run.dir"
    return None


# --- keys: the command line's keys checked against the schemas of the chosen options -------------
# Options that take a value: their value is never an override (`--cfg job`, `--info config`).
NOT_A_RUN = {"-sc", "--shell-completion", "-cn", "--config-name", "-cp", "--config-path", "--experimental-rerun"}
OVERLAYS = ("task", "experiment", "hparams_search")  # groups whose options choose other groups' options


def command_line_overrides(argv: List[str]) -> list:
    """argv's overrides parsed by Hydra's own grammar; [] when they do not parse (Hydra then says why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [arg for arg in argv[1:] if ("=" in arg or arg.startswith("~")) and not arg.startswith("-")]
    try:
        return OverridesParser.create().parse_overrides(args)
    except Exception:
        return []


def _read_yaml(path: str) -> dict:
    import yaml  # omegaconf's own dependency, already imported by Hydra

    with open(path) as f:
        content = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return content if isinstance(content, dict) else {}


def _group_options(conf_dir: str, group: str) -> List[str]:
    folder = os.path.join(conf_dir, group)
    return sorted(name[:-5] for name in os.listdir(folder) if name.endswith(".yaml")) if os.path.isdir(folder) else []


def _choices_of(override, conf_dir: str) -> Optional[Set[str]]:
    """The options a group override picks (several for a sweep); None when that cannot be told."""
    from hydra.core.override_parser.types import Glob

    if override.is_delete():
        return set()
    value = override.value()
    if isinstance(value, Glob):
        return set(value.filter(_group_options(conf_dir, override.key_or_group)))
    if override.is_sweep_override():
        try:
            return set(override.sweep_string_iterator())
        except Exception:
            return None
    if isinstance(value, list):  # logger=[tensorboard,mlflow]: one run composes them all
        return {tuple(str(option) for option in value)}
    return {override.get_value_element_as_str()}


def chosen_options(overrides: list, conf_dir: str) -> Dict[str, Optional[Set[str]]]:
    """Group -> the options a run (or each job of a sweep) composes: train.yaml's defaults, changed by the
    overlays' `override /group: option` lines (task, experiment, hparams_search), changed by the command
    line. None: any option may be used (a sweeper's search space picks it)."""
    choices: Dict[str, Optional[Set[str]]] = {}
    for entry in _read_yaml(os.path.join(conf_dir, "train.yaml")).get("defaults", []):
        if isinstance(entry, dict):
            for group, option in entry.items():
                choices[group] = set() if option is None else {str(option)}
    given = {o.key_or_group: _choices_of(o, conf_dir) for o in overrides if "." not in o.key_or_group and o.package is None}
    for overlay in OVERLAYS:
        for option in given.get(overlay, choices.get(overlay)) or ():
            path = os.path.join(conf_dir, overlay, f"{option}.yaml")
            content = _read_yaml(path) if os.path.isfile(path) else {}
            for entry in content.get("defaults", []):
                for key, value in (entry.items() if isinstance(entry, dict) else ()):
                    if key.startswith("override /"):
                        choices[key[len("override /"):]] = {str(value)}
            for group in ((content.get("hydra") or {}).get("sweeper") or {}).get("params") or {}:
                choices[group] = None
    choices.update(given)
    for o in overrides:  # a search space given on the command line: hydra.sweeper.params.loss=choice(...)
        if o.key_or_group.startswith("hydra.sweeper.params."):
            choices[o.key_or_group[len("hydra.sweeper.params."):]] = None
    return choices


def option_keys(conf_dir: str, group: str, option: str) -> Optional[Set[str]]:
    """The keys of one option: its schema's fields and its YAML's own keys; None for an option that is
    not a YAML file of conf/ (a --config-dir of the user's may add it: Hydra checks it then). A schema
    placed under a key of its own (`/logger_mlflow_schema@mlflow`) gives `mlflow` and `mlflow.<field>`."""
    import dataclasses

    path = os.path.join(conf_dir, group, f"{option}.yaml")
    if not os.path.isfile(path):
        return None
    content = _read_yaml(path)
    keys = set(content) - {"defaults"}
    schemas = {f"{group}_{name}_schema": schema for name, schema in SCHEMAS.get(group, {}).items()}
    for entry in content.get("defaults", []):
        name, _, package = str(entry).lstrip("/").partition("@")
        schema = schemas.get(name) if isinstance(entry, str) else None
        if schema is not None:
            prefix = "" if package in ("", "_here_") else package + "."
            keys |= {prefix + f.name for f in dataclasses.fields(schema)} | ({package} if prefix else set())
    return keys


def unknown_keys_problem(argv: List[str], conf_dir: str, extra_top_level: Iterable[str] = ()) -> Optional[str]:
    """One line naming the command line's keys that the trainer's config does not have, with the closest
    valid key; None when every key is known. hydra.* keys (the sweeper's included) are Hydra's to check."""
    import dataclasses

    if NOT_A_RUN & set(argv[1:]):
        return None
    overrides = [o for o in command_line_overrides(argv) if o.package is None and "/" not in o.key_or_group]
    keys = [o for o in overrides if o.key_or_group.split(".")[0] != "hydra"]
    if not keys:
        return None
    top = {f.name for f in dataclasses.fields(TrainConfig)} | set(extra_top_level)
    top |= {name for name in os.listdir(conf_dir) if os.path.isdir(os.path.join(conf_dir, name)) and name != "hydra"}
    # heading -> its keys (for a group: the keys every chosen option has), and the keys of any option
    under: Dict[str, Set[str]] = {}
    anywhere: Dict[str, Dict[str, List[str]]] = {}
    for f in dataclasses.fields(TrainConfig):
        if callable(f.default_factory):  # trainer, checkpoint: dataclasses of their own
            under[f.name] = {g.name for g in dataclasses.fields(f.default_factory())}
    choices = chosen_options(overrides, conf_dir)
    for group in SCHEMAS:
        every = {option: option_keys(conf_dir, group, option) for option in _group_options(conf_dir, group)}
        chosen = choices.get(group)
        picked = [_keys_of(every, option) for option in (every if chosen is None else chosen)]
        if any(option is None for option in picked):
            continue  # an option from outside conf/ (--config-dir): Hydra checks its keys
        # a sweep over options (loss=ce,focal): each job must have the key; a search space: any may pick it
        combine = set.union if chosen is None else set.intersection
        under[group] = combine(*picked) if picked else set()
        for option, option_key_set in every.items():
            for key in option_key_set or ():
                anywhere.setdefault(group, {}).setdefault(key, []).append(option)
    problems = []
    for override in keys:
        parts = override.key_or_group.split(".")
        heading = parts[0]
        if len(parts) == 1 and heading in top:
            continue
        inner = _inner_key(parts, anywhere.get(heading, {}))  # mlflow.tracking_uri of logger.mlflow.tracking_uri
        if len(parts) > 1 and (heading in under and inner in under[heading] or heading in top and heading not in under):
            continue  # deeper keys are inside a value (a list, class fractions); under a plain value Hydra says why
        key = f"{heading}.{inner}" if inner else heading
        holders = anywhere.get(heading, {}).get(inner if len(parts) == len(inner.split(".")) + 1 else "")
        if holders:
            chosen = ",".join(sorted(_option_text(option) for option in choices.get(heading) or ()))
            problems.append(f"{key} is not a key of {heading}={chosen} (only of "
                            f"{', '.join(f'{heading}={option}' for option in holders)}); choose that option or leave the key out")
        else:
            problems.append(f"{key} is not a config key; {_closest_hint(parts, top, under, anywhere)}")
    if not problems:
        return None
    adding = any(o.is_add() or o.is_force_add() for o in keys)
    return "; ".join(problems) + (" (+ and ++ cannot add keys to the trainer's config: nothing would read them)" if adding else "")


def _keys_of(every: Dict[str, Optional[Set[str]]], option) -> Optional[Set[str]]:
    """The keys of an option, or of several composed at once (a tuple: logger=[tensorboard,mlflow])."""
    found = [every.get(name) for name in (option if isinstance(option, tuple) else (option,))]
    return None if any(keys is None for keys in found) else set().union(*found)


def _option_text(option) -> str:
    return f"[{','.join(option)}]" if isinstance(option, tuple) else option


def _inner_key(parts: List[str], keys: Iterable[str]) -> str:
    """The key within a group: one level (loss.gamma), or two under an option that keeps its settings under
    a key of its own (logger.mlflow.tracking_uri)."""
    if len(parts) > 2 and any(key.startswith(parts[1] + ".") for key in keys):
        return ".".join(parts[1:3])
    return parts[1] if len(parts) > 1 else ""


def _closest_hint(parts: List[str], top: Set[str], under: Dict[str, Set[str]], anywhere: Dict[str, Dict[str, List[str]]]) -> str:
    """'did you mean X?' by difflib: a key of the same heading, of another option of the group, or the same
    name under another heading (trainer.lr -> optimizer.lr, max_epochs -> trainer.max_epochs)."""
    import difflib

    def closest(word: str, candidates: Iterable[str]) -> Optional[str]:
        found = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
        return found[0] if found else None

    heading, leaf = parts[0], parts[-1]
    if len(parts) > 1 and heading in under:
        near = closest(".".join(parts[1:]), under[heading]) or closest(leaf, under[heading])
        if near:
            return f"did you mean {heading}.{near}?"
        by_leaf = {key.rsplit(".", 1)[-1]: key for key in sorted(under[heading], reverse=True) if "." in key}
        near = closest(leaf, by_leaf)  # logger.logdir -> logger.tensorboard.log_dir
        if near:
            return f"did you mean {heading}.{by_leaf[near]}?"
        near = closest(leaf, anywhere.get(heading, {}))
        if near:
            options = ", ".join(f"{heading}={option}" for option in anywhere[heading][near])
            return f"did you mean {heading}.{near} (a key of {options})?"
    elif len(parts) == 1:
        near = closest(leaf, top)
        if near:
            return f"did you mean {near}?"
    # the same name under another heading; for a top-level word also a close one (max_epoch -> trainer.max_epochs)
    headings = {key: other for other in sorted(under, reverse=True) for key in under[other]}
    near = leaf if leaf in headings else closest(leaf, headings) if len(parts) == 1 else None
    if near:
        return f"did you mean {headings[near]}.{near}?"
    if heading in under:
        return f"the keys under {heading} are: {', '.join(sorted(under[heading]))}"
    return f"the top-level keys are: {', '.join(sorted(top))}"


def slurm_problem(argv: List[str]) -> Optional[str]:
    """hydra/launcher=slurm where this machine has no SLURM: submitit would fail with a traceback."""
    if not {"-m", "--multirun"} & set(argv[1:]):
        return None  # a single run never uses the launcher
    launcher = value_of(argv, "hydra/launcher")
    if launcher not in ("slurm", "submitit_slurm"):
        return None
    missing = [command for command in ("sbatch", "srun") if shutil.which(command) is None]
    if not missing:
        return None
    return (f"hydra/launcher={launcher} submits the jobs to SLURM, but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not on PATH on this machine; leave out hydra/launcher={launcher} "
            "to run the sweep's jobs here one after another, or start one job on several processes with torchrun")


def join_torchrun(argv: List[str]) -> None:
    """Under torchrun every rank runs this command: they must share rank 0's run directory, and only
    rank 0 writes Hydra's files and the log file."""
    if not launched_by_torchrun():
        return
    from trainer.engine import distributed

    if {"-m", "--multirun"} & set(argv):
        print("error: a sweep (-m) cannot run under torchrun; run each job with torchrun instead", file=sys.stderr)
        raise SystemExit(2)
    place = distributed.init_process_group()
    if value_of(argv, "hydra.run.dir") is None:
        import datetime

        now = datetime.datetime.now()
        chosen = os.path.join("outputs", now.strftime("%Y-%m-%d"), now.strftime("%H-%M-%S-%f"))
        argv.append(f"hydra.run.dir={distributed.broadcast_from_main(chosen)}")
    if not place.is_main:
        argv += ["hydra.output_subdir=null", "hydra.job_logging.root.level=WARNING", "hydra.job_logging.root.handlers=[console]"]


def print_help(argv: List[str]) -> bool:
    """`--help` from the same config and template as Hydra's, without Hydra's listing of the options of
    every group (its own included), which deep-copies the config repository once per group and takes
    seconds. Falls back to Hydra's help if the overrides do not compose."""
    if not {"--help", "-h"} & set(argv[1:]) or {"-m", "--multirun"} & set(argv[1:]):
        return False
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf


    conf = Path(CONF_DIR)
    overrides = [arg for arg in argv[1:] if arg not in ("--help", "-h")]
    try:
        with initialize_config_dir(CONF_DIR, version_base=None):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    except Exception:
        return False
    groups = "\n".join(
        f"{folder.name}: {', '.join(sorted(p.stem for p in folder.glob('*.yaml')))}"
        for folder in sorted(conf.iterdir()) if folder.is_dir() and folder.name != "hydra"
    )
    template = cfg.hydra.help.template
    config = OmegaConf.to_yaml({key: cfg[key] for key in cfg if key != "hydra"}, resolve=False)
    text = template.replace("${hydra.help.header}", cfg.hydra.help.header).replace("${hydra.help.footer}", cfg.hydra.help.footer)
    print(text.replace("$APP_CONFIG_GROUPS", groups).replace("$CONFIG", config))
    return True


def schema_settings(schema) -> List[str]:
    """`key: default  # comment` for each field of a schema dataclass, the comment as its source states it."""
    import dataclasses
    import inspect

    from omegaconf import OmegaConf

    comments = {}
    for line in inspect.getsource(schema).splitlines():
        match = re.match(r"\s+(\w+): [^#]*?(?:#\s*(.*))?$", line)
        if match and match.group(2):
            comments[match.group(1)] = match.group(2)
    defaults = OmegaConf.structured(schema)
    lines = []
    for field in dataclasses.fields(schema):
        value = "???" if OmegaConf.is_missing(defaults, field.name) else OmegaConf.to_yaml({"v": defaults[field.name]})[3:].strip()
        setting = f"{field.name}: {value}"
        comment = comments.get(field.name)
        lines.append(f"{setting:<19} # {comment}" if comment else setting)
    return lines


def print_command_help(config_name: str, argv: List[str]) -> bool:
    """`--help` of a command with its own config (evaluate, predict): the header, every setting with its
    default and comment as its schema states them (`config.schema.COMMAND_SCHEMAS`), and the footer's
    examples. Hydra's own help would list the trainer's config groups, which these commands do not read,
    and print the settings without their comments. No torch, no composition."""
    if not {"--help", "-h"} & set(argv[1:]):
        return False
    from omegaconf import OmegaConf

    help_cfg = OmegaConf.load(os.path.join(CONF_DIR, config_name + ".yaml")).hydra.help
    settings = schema_settings(COMMAND_SCHEMAS[config_name])
    print(help_cfg.header.rstrip() + "\n\n== Settings (key=value; ??? = required) ==\n\n" + "\n".join(settings)
          + "\n\n" + help_cfg.footer.rstrip())
    return True


def refuse(problem: Optional[str]) -> None:
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)


def prepare(argv: List[str]) -> None:

    refuse(unknown_keys_problem(argv, CONF_DIR))
    if print_help(argv):
        raise SystemExit(0)
    refuse(slurm_problem(argv))
    redirect_resumed_run(argv)
    join_torchrun(argv)
    refuse(output_dir_problem(argv))
