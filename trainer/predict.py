"""`python -m trainer.predict ckpt_path=<run>/checkpoints/best.ckpt input=<folder|CSV|image> output=predictions.csv`

One row per image: its path, the predicted class and the probability of every class; for a
`task=regression` checkpoint, its path and the predicted value. Model, classes and the evaluation
transform come from the checkpoint alone (its stored config, class names and the weights it was
chosen by: the EMA when the run monitored `val_ema/...`). `tta=flip` averages the probabilities
(or values) of each image and its mirror image.

`ckpt_path` may also be a model `python -m trainer.export` wrote (ONNX or TorchScript, with its JSON
beside it): the same CSV, from onnxruntime or torch.jit instead of the checkpoint (`inference_model`).
"""

import sys

import hydra
from omegaconf import DictConfig

from trainer.config.schema import CONF_DIR, register_configs
from trainer.errors import UserError, reported_as_exit
from trainer.run.command_line import print_command_help

register_configs()

TTA_MODES = ("none", "flip")


def check_request(cfg: DictConfig) -> None:
    """What can be refused before loading torch and the checkpoint."""
    import os

    from omegaconf import OmegaConf

    for key in ("ckpt_path", "input"):
        if OmegaConf.is_missing(cfg, key):
            raise UserError(f"{key} is required: python -m trainer.predict ckpt_path=<run>/checkpoints/best.ckpt "
                            "input=<folder, CSV or image> output=predictions.csv")
    if cfg.tta not in TTA_MODES:
        raise UserError(f"tta={cfg.tta} is not valid; use one of: {', '.join(TTA_MODES)}")
    if cfg.batch_size < 1:
        raise UserError(f"batch_size={cfg.batch_size} is not valid; use an integer >= 1")
    if cfg.num_workers is not None and cfg.num_workers < 0:
        raise UserError(f"num_workers={cfg.num_workers} is not valid; use 0 (load in the main process) or more")
    if os.path.exists(cfg.output) and not cfg.overwrite:
        raise UserError(f"output={cfg.output} already exists; choose another file, or set overwrite=true to replace it")


def predict(cfg: DictConfig) -> str:
    check_request(cfg)

    # heavy (torch, timm, scikit-learn): imported here so that --help answers without them
    import torch

    from trainer.data import images
    from trainer.data.loaders import available_cpus, seed_worker
    from trainer.data.transforms import decode_size, eval_transform, resolve_input
    from trainer.deployment.inference_model import load_inference_model
    from trainer.errors import UserError
    from trainer.run import checks, environment

    device = environment.resolve_device(cfg.device)

    source = load_inference_model(cfg.ckpt_path, device)  # a checkpoint or an exported model
    data = source.data
    if "channels" not in data:
        raise UserError(f"'{cfg.ckpt_path}' was trained on data={data.name}, not on image files, so it has no "
                        "image transform to predict with; use a checkpoint of a data=image_folder or data=csv run")
    class_names = source.class_names

    paths, shown, path_header = list_inputs(cfg, data)
    paths, shown = images.drop_bad_files(paths, shown, cfg.skip_bad_files, f"input={cfg.input}", skip_key="skip_bad_files")
    if not paths:
        raise UserError(f"input={cfg.input}: no readable image is left to predict")
    spec = resolve_input(source.model_name, data.channels, *(data[key] for key in checks.INPUT_KEYS))
    dataset = PredictionInputs(paths, eval_transform(spec), data.channels, spec["image_size"], decode_size(spec),
                               spec["interpolation"])
    workers = available_cpus() if cfg.num_workers is None else cfg.num_workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
        worker_init_fn=seed_worker if workers > 0 else None,
    )

    regression = source.regression
    outputs = source.load()  # probabilities, or a regression model's values

    results, failures = [], []
    with torch.inference_mode():
        for batch, reasons in loader:
            batch = batch.to(device, non_blocking=device.type == "cuda")
            out = outputs(batch)
            if cfg.tta == "flip":
                out = (out + outputs(torch.flip(batch, dims=[3]))) / 2
            results.append(out.cpu())
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
    names = [shown[i] for i in keep]
    if regression:
        write_rows(cfg.output, [path_header, "prediction"], ([n, f"{v:.6g}"] for n, v in zip(names, results[keep, 0])))
        what = "predicted values"
    else:
        write_predictions(cfg.output, path_header, names, results[keep], class_names)
        what = f"{len(class_names)} classes"
    print(f"written: {cfg.output} ({len(keep)} images, {what}, tta={cfg.tta}{source.described})")
    return cfg.output


def list_inputs(cfg: DictConfig, data: DictConfig):
    """(image paths, the names written in the output, the output's first column header)."""
    import os

    # heavy (torch, timm, scikit-learn): imported here so that --help answers without them
    from trainer.data import images

    source = cfg.input
    if os.path.isdir(source):
        paths = images.images_under(source)
        if not paths:
            raise UserError(f"input={source} holds no image files (extensions: {' '.join(images.image_extensions())})")
        return paths, [os.path.relpath(p, source) for p in paths], "path"
    if os.path.isfile(source) and source.lower().endswith(".csv"):
        trained_on_csv = data.name == "csv"
        column = cfg.path_column or (data.path_column if trained_on_csv else "path")
        suffix = cfg.path_suffix if cfg.path_suffix is not None else (data.path_suffix if trained_on_csv else "")
        paths, _, names = images.scan_csv(source, cfg.image_dir, column, None, suffix, key="input")
        return paths, names, column
    if os.path.isfile(source) and images.is_image_file(source):
        return [source], [source], "path"
    if not os.path.exists(source):
        raise UserError(f"input={source} does not exist")
    raise UserError(f"input={source} is neither a folder, a .csv file nor an image file")


class PredictionInputs:
    """(transformed image, "") per file, or (zeros, why it failed): a decode failure is reported in
    the main process, which knows the path, instead of as a worker's traceback."""

    def __init__(self, paths, transform, channels: int, image_size: int, decode_size: int, fit: str):
        # decoded as validation decodes (trainer.data.images.load_image with `fit`), so predictions match evaluate's
        self.paths, self.transform, self.decode_size, self.fit = paths, transform, decode_size, fit
        self.mode = "L" if channels == 1 else "RGB"
        self.shape = (channels, image_size, image_size)

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


def write_predictions(path: str, path_header: str, names, prob, class_names) -> None:
    """One row per image: its name, the most probable class and every class's probability."""
    columns = list(class_names)
    if set(columns) & {path_header, "prediction"}:  # a class called "path" would hide a column
        columns = [f"prob_{name}" for name in class_names]
    rows = ([name, class_names[int(row.argmax())], *(f"{p:.6g}" for p in row)] for name, row in zip(names, prob))
    write_rows(path, [path_header, "prediction", *columns], rows)


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
