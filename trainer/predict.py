"""`python -m trainer.predict ckpt_path=<run>/checkpoints/best.ckpt input=<folder|CSV|image> output=predictions.csv`

One row per image: its path, the predicted class and the probability of every class; for a
`task=regression` checkpoint, its path and the predicted value. Model, classes and the evaluation
transform come from the checkpoint alone (its stored config, class names and the weights it was
chosen by: the EMA when the run monitored `val_ema/...`). `tta=flip` averages the probabilities
(or values) of each image and its mirror image; `flip+shift` and `five_crop` add views (deployment.tta).

`ckpt_path` may also be a model `python -m trainer.export` wrote (ONNX or TorchScript, with its JSON
beside it): the same CSV, from onnxruntime or torch.jit instead of the checkpoint (`inference_model`).
A run directory, a sweep directory or a list names several models: one ensemble (deployment.ensemble).
The ids, label and probability columns and the row order follow the submission settings (deployment.submission).
"""

import sys

import hydra
from omegaconf import DictConfig

from trainer.config.schema import CONF_DIR, register_configs
from trainer.deployment import submission
from trainer.deployment.ensemble import ENSEMBLES, model_paths
from trainer.deployment.tta import check_tta
from trainer.errors import UserError, reported_as_exit
from trainer.run.command_line import print_command_help

register_configs()


def check_request(cfg: DictConfig):
    """What can be refused before loading torch and the checkpoints: (the model files, what they are, the sample
    submission or None)."""
    import os

    from omegaconf import OmegaConf

    for key in ("ckpt_path", "input"):
        if OmegaConf.is_missing(cfg, key):
            raise UserError(f"{key} is required: python -m trainer.predict ckpt_path=<run>/checkpoints/best.ckpt "
                            "input=<folder, CSV or image> output=predictions.csv")
    check_tta(cfg.tta, cfg.tta_shift)
    if cfg.ensemble not in ENSEMBLES:
        raise UserError(f"ensemble={cfg.ensemble} is not valid; use one of: {', '.join(ENSEMBLES)}")
    if cfg.batch_size < 1:
        raise UserError(f"batch_size={cfg.batch_size} is not valid; use an integer >= 1")
    if cfg.num_workers is not None and cfg.num_workers < 0:
        raise UserError(f"num_workers={cfg.num_workers} is not valid; use 0 (load in the main process) or more")
    if os.path.exists(cfg.output) and not cfg.overwrite:
        raise UserError(f"output={cfg.output} already exists; choose another file, or set overwrite=true to replace it")
    files, described = model_paths(cfg.ckpt_path)
    return files, described, submission.check_format(cfg)


def predict(cfg: DictConfig) -> str:
    files, described_files, sample = check_request(cfg)

    # heavy (torch, timm, scikit-learn): imported here so that --help answers without them
    import torch

    from trainer.data import images
    from trainer.data.loaders import available_cpus, seed_worker
    from trainer.data.transforms import FiveCropTransform, decode_size, eval_transform
    from trainer.deployment.ensemble import combine, load_sources
    from trainer.deployment.tta import views_mean
    from trainer.errors import UserError
    from trainer.run import environment

    device = environment.resolve_device(cfg.device)

    if len(files) > 1 or files[0] != str(cfg.ckpt_path):
        print(f"ckpt_path: {len(files)} model(s): {described_files}")
    sources, spec = load_sources(files, device)  # checkpoints or exported models that agree on their inputs and outputs
    source = sources[0]
    data, class_names, regression = source.data, source.class_names, source.regression
    if regression and cfg.ensemble == "geometric" and len(sources) > 1:
        raise UserError("ensemble=geometric averages log-probabilities, which a task=regression model has not; "
                        "use ensemble=mean (the mean of the values)")

    paths, shown, path_header, column_values = list_inputs(cfg, data)
    kept = images.drop_bad_files(paths, list(range(len(paths))), cfg.skip_bad_files, f"input={cfg.input}",
                                 skip_key="skip_bad_files")[1]
    if not kept:
        raise UserError(f"input={cfg.input}: no readable image is left to predict")
    paths, shown = [paths[i] for i in kept], [shown[i] for i in kept]
    column_values = [column_values[i] for i in kept] if column_values is not None else None
    ids = submission.input_ids(cfg, paths, shown, column_values)
    submission.row_order(cfg, sample, ids)  # a sample submission that does not match is refused before predicting
    header, kinds = submission.layout(cfg, sample, path_header, class_names, regression)
    five_crop = cfg.tta == "five_crop"
    dataset = PredictionInputs(paths, FiveCropTransform(spec) if five_crop else eval_transform(spec), data.channels,
                               spec["image_size"], decode_size(spec), spec["interpolation"], crops=5 if five_crop else 0)
    workers = available_cpus() if cfg.num_workers is None else cfg.num_workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
        worker_init_fn=seed_worker if workers > 0 else None,
    )

    runners = [s.load() for s in sources]  # each a function from a batch to probabilities, or regression values

    results, failures = [], []
    with torch.inference_mode():
        for batch, reasons in loader:
            batch = batch.to(device, non_blocking=device.type == "cuda")
            outputs = [views_mean(run, batch, cfg.tta, cfg.tta_shift) for run in runners]
            results.append(combine(outputs, cfg.ensemble, regression).cpu())
            failures += list(reasons)
    results = torch.cat(results).numpy()

    unreadable = [i for i, reason in enumerate(failures) if reason]
    if unreadable:
        first = f"'{paths[unreadable[0]]}' {failures[unreadable[0]]}"
        if not cfg.skip_bad_files:
            raise UserError(f"{len(unreadable)} image file(s) could not be decoded, the first: {first}. "
                            "Remove or replace them, or set skip_bad_files=true to leave them out")
        print(f"warning: left out {len(unreadable)} image file(s) that could not be decoded, the first: {first}")
    keep = [i for i in range(len(paths)) if not failures[i]]
    order = [keep[j] for j in submission.row_order(cfg, sample, [ids[i] for i in keep])]
    write_rows(cfg.output, header, submission.submission_rows(cfg, ids, order, results, class_names, regression, kinds))
    what = "predicted values" if regression else f"{len(class_names)} classes"
    models = f", ensemble={cfg.ensemble} of {len(sources)} models" if len(sources) > 1 else source.described
    print(f"written: {cfg.output} ({len(keep)} images, {what}, tta={cfg.tta}{models})")
    return cfg.output


def list_inputs(cfg: DictConfig, data: DictConfig):
    """(image paths, the names written in the output, the output's first column header, the values of the input
    CSV's input_id_column or None)."""
    import os

    # heavy (torch, timm, scikit-learn): imported here so that --help answers without them
    from trainer.data import images

    source = cfg.input
    if os.path.isdir(source):
        paths = images.images_under(source)
        if not paths:
            raise UserError(f"input={source} holds no image files (extensions: {' '.join(images.image_extensions())})")
        return paths, [os.path.relpath(p, source) for p in paths], "path", None
    if os.path.isfile(source) and source.lower().endswith(".csv"):
        trained_on_csv = data.name == "csv"
        column = cfg.path_column or (data.path_column if trained_on_csv else "path")
        suffix = cfg.path_suffix if cfg.path_suffix is not None else (data.path_suffix if trained_on_csv else "")
        paths, _, names = images.scan_csv(source, cfg.image_dir, column, None, suffix, key="input")
        values = None
        if cfg.id_values == "column":  # the column's presence was checked before torch
            values = images.csv_column(images.read_csv_rows(source, "input")[0], cfg.input_id_column, source)
        return paths, names, column, values
    if os.path.isfile(source) and images.is_image_file(source):
        return [source], [source], "path", None
    if not os.path.exists(source):
        raise UserError(f"input={source} does not exist")
    raise UserError(f"input={source} is neither a folder, a .csv file nor an image file")


class PredictionInputs:
    """(transformed image, "") per file, or (zeros, why it failed): a decode failure is reported in
    the main process, which knows the path, instead of as a worker's traceback."""

    def __init__(self, paths, transform, channels: int, image_size: int, decode_size: int, fit: str, crops: int = 0):
        # decoded as validation decodes (trainer.data.images.load_image with `fit`), so predictions match evaluate's
        self.paths, self.transform, self.decode_size, self.fit = paths, transform, decode_size, fit
        self.mode = "L" if channels == 1 else "RGB"
        self.shape = (crops,) * bool(crops) + (channels, image_size, image_size)  # crops: five_crop's stacked views

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import torch

        # heavy (torch, timm, scikit-learn): imported here so that --help answers without them
        from trainer.data.images import UnreadableImage, load_image

        try:
            return self.transform(load_image(self.paths[index], self.mode, decode_size=self.decode_size, fit=self.fit)), ""
        except UnreadableImage as err:
            return torch.zeros(self.shape), err.reason


def write_rows(path: str, header, rows) -> None:
    """Written to a temporary file and renamed into place: never a half-written predictions file."""
    import csv
    import os
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".csv", dir=directory)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base=None)
def main(cfg: DictConfig) -> None:
    with reported_as_exit():
        predict(cfg)


if __name__ == "__main__":
    if not print_command_help("predict", sys.argv):
        main()
