"""Several models as one: which files `ckpt_path` names, whether they can predict together, and how their
outputs are combined.

`ckpt_path` may be a checkpoint or an exported model, a run directory (its checkpoints/best.ckpt), a sweep
directory (each job's checkpoints/best.ckpt, in job order: the layout `python -m trainer -m ...` writes, a
fold sweep included) or a list of these. The models must see the same inputs and name the same outputs
(classes in the same order, task, channels, and the input settings that make the evaluation transform);
their architectures may differ. Their probabilities (after each one's own TTA) are averaged
(`ensemble=mean`) or their log-probabilities are (`geometric`, renormalised); regression values are
averaged. Listing the files reads no weights and imports no torch, so a bad path is refused at once.
"""

import os
from typing import Any, Dict, List, Sequence, Tuple

from trainer.errors import UserError

ENSEMBLES = ("mean", "geometric")
BEST = os.path.join("checkpoints", "best.ckpt")


def model_paths(ckpt_path: Any) -> Tuple[List[str], str]:
    """(the model files, in order; what they are, for the log) of a `ckpt_path` setting."""
    entries = [ckpt_path] if isinstance(ckpt_path, str) else list(ckpt_path or [])
    if not entries:
        raise UserError("ckpt_path=[] names no model; give a checkpoint, a run or sweep directory, or a list of them")
    paths, described = [], []
    for entry in entries:
        found, what = entry_paths(str(entry))
        paths += found
        described.append(what)
    repeated = sorted({p for p in paths if paths.count(p) > 1})  # a handful of files: counting is cheap
    if repeated:
        raise UserError(f"ckpt_path names '{repeated[0]}' more than once; an ensemble counts each model once")
    return paths, "; ".join(described)


def entry_paths(entry: str) -> Tuple[List[str], str]:
    if not os.path.isdir(entry):
        if not os.path.exists(entry):
            raise UserError(f"ckpt_path={entry} does not exist")
        return [entry], entry
    if os.path.isfile(os.path.join(entry, BEST)):
        return [os.path.join(entry, BEST)], f"{entry} (a run: its best.ckpt)"
    jobs = sorted((name for name in os.listdir(entry) if name.isdigit() and os.path.isdir(os.path.join(entry, name))),
                  key=int)
    if not jobs:
        raise UserError(f"ckpt_path={entry} is a directory without a best.ckpt: neither a run directory "
                        f"(<run>/{BEST}) nor a sweep directory (<sweep>/<job number>/{BEST})")
    lacking = [job for job in jobs if not os.path.isfile(os.path.join(entry, job, BEST))]
    if lacking:
        raise UserError(f"ckpt_path={entry} is a sweep directory whose job(s) {', '.join(lacking)} of {len(jobs)} have no "
                        f"{BEST} (failed, stopped before a validation, or still running); list the checkpoints to use "
                        "instead: 'ckpt_path=[a.ckpt,b.ckpt]'")
    return [os.path.join(entry, job, BEST) for job in jobs], f"{entry} (a sweep: {len(jobs)} jobs' best.ckpt)"


def load_sources(paths: Sequence[str], device):
    """(the InferenceModel of each file, their common input spec): each must have an image transform, and
    together they must agree (`check_agreement`). Reads the files' settings; no model is built yet."""
    # heavy (torch, timm): imported here so that the checks above answer without them
    from trainer.data.transforms import resolve_input
    from trainer.deployment.inference_model import load_inference_model
    from trainer.run.checks import INPUT_KEYS

    sources, specs = [load_inference_model(path, device) for path in paths], []
    for path, source in zip(paths, sources):
        if "channels" not in source.data:
            raise UserError(f"'{path}' was trained on data={source.data.name}, not on image files, so it has no "
                            "image transform to predict with; use a checkpoint of a data=image_folder or data=csv run")
        specs.append(resolve_input(source.model_name, source.data.channels, *(source.data[key] for key in INPUT_KEYS)))
    check_agreement(paths, [{"class names": source.class_names,
                             "task": "regression" if source.regression else "classification",
                             **{f"data.{key}": value for key, value in spec.items()}}
                            for source, spec in zip(sources, specs)])
    return sources, specs[0]


def check_agreement(paths: Sequence[str], settings: Sequence[Dict[str, Any]]) -> None:
    """Refuse models that would need different inputs or name different outputs: one message naming the
    first setting they disagree on and which files hold which value."""
    if len(paths) < 2:
        return
    for key in settings[0]:
        values = [setting[key] for setting in settings]
        if all(value == values[0] for value in values):
            continue
        groups: Dict[str, List[str]] = {}
        for path, value in zip(paths, values):
            groups.setdefault(shown(value), []).append(path)
        listed = "; ".join(f"{value} in {', '.join(files)}" for value, files in groups.items())
        raise UserError(f"the models of ckpt_path disagree on {key}: {listed}. An ensemble needs the same classes (in "
                        "the same order), task, channels and input settings (image_size, mean, std, interpolation, "
                        "crop_pct); predict with each group separately")


def shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def combine(outputs: List[Any], ensemble: str, regression: bool):
    """One batch's outputs of every model (each (N, classes) probabilities, or (N, 1) values) as one."""
    import torch  # heavy: imported here so that the checks above answer without it

    stacked = torch.stack(outputs)
    if regression or ensemble == "mean" or len(outputs) == 1:
        return stacked.mean(0)
    # geometric: the mean of log-probabilities, renormalised (softmax of the mean log); a probability that
    # underflowed to 0 counts as the smallest positive float instead of -inf
    logs = torch.log(stacked.double().clamp_min(torch.finfo(torch.float32).tiny))
    return torch.softmax(logs.mean(0), dim=1).to(stacked.dtype)
