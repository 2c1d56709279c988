"""`python -m trainer.export ckpt_path=<run>/checkpoints/best.ckpt format=onnx|torchscript`: a model file to deploy.

The weights the checkpoint was chosen by (the EMA when the run monitored val_ema/...) are exported in
float32 with a dynamic batch axis, by torch.onnx (format=onnx) or torch.jit.trace (format=torchscript),
to `output` (default: beside the checkpoint, `<stem>.onnx` or `<stem>.torchscript.pt`), and
`<output>.json` beside it says how to feed the model (`exporters.deployment_info`). Before either is
kept, the file is loaded back (onnxruntime, torch.jit.load) and run on the first `check_batches`
validation batches, rebuilt from the checkpoint's config as evaluate rebuilds them, and on one single
image; the largest difference of probabilities against PyTorch is printed, and above `tolerance`
nothing is written and the exit status is 2. An existing file is only replaced with `overwrite=true`.
"""

import sys

import hydra
from omegaconf import DictConfig

from trainer.config.schema import CONF_DIR, register_configs, with_current_defaults
from trainer.errors import reported_as_exit
from trainer.run.command_line import print_command_help

register_configs()

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}  # format -> the default file's ending
REQUIRED_KEYS = ("model", "config", "class_names", "epoch")


def output_path(cfg: DictConfig) -> str:
    import os

    return cfg.output or os.path.splitext(cfg.ckpt_path)[0] + FORMATS[cfg.format]


def check_request(cfg: DictConfig) -> str:
    """What can be refused before loading torch and the checkpoint; returns the model file's path."""
    import os

    from omegaconf import OmegaConf

    from trainer.deployment.inference_model import info_path
    from trainer.errors import UserError

    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError("ckpt_path is required: python -m trainer.export ckpt_path=<run>/checkpoints/best.ckpt format=onnx")
    if cfg.format not in FORMATS:
        raise UserError(f"format={cfg.format} is not valid; use one of: {', '.join(FORMATS)}")
    if cfg.check_batches < 1:
        raise UserError(f"check_batches={cfg.check_batches} is not valid; use an integer >= 1")
    if not cfg.tolerance >= 0:
        raise UserError(f"tolerance={cfg.tolerance} is not valid; use a number >= 0")
    if not os.path.isfile(cfg.ckpt_path):
        raise UserError(f"checkpoint '{cfg.ckpt_path}' does not exist")
    output = output_path(cfg)
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        raise UserError(f"output={output} is a folder; name the model file, e.g. output={os.path.join(output, 'model')}"
                        f"{FORMATS[cfg.format]}")
    if os.path.abspath(output) == os.path.abspath(cfg.ckpt_path):
        raise UserError(f"output={output} is the checkpoint itself; choose another file")
    if not cfg.overwrite:
        for path in (output, info_path(output)):
            if os.path.exists(path):
                raise UserError(f"{path} already exists; choose another output=, or set overwrite=true to replace it")
    if cfg.format == "onnx":
        from trainer.deployment.exporters import require_onnx_packages

        require_onnx_packages()
    return output


def export(cfg: DictConfig) -> dict:
    output = check_request(cfg)

    import os

    import torch
    from omegaconf import OmegaConf

    from trainer.checkpointing.checkpoint import chosen_by_ema, read_checkpoint
    from trainer.deployment import exporters
    from trainer.deployment.inference_model import checkpoint_model, info_path, onnx_runner, torchscript_runner
    from trainer.engine.run_files import write_json
    from trainer.errors import UserError
    from trainer.run import assembly, environment

    path = cfg.ckpt_path
    ckpt = read_checkpoint(path)
    missing = [key for key in REQUIRED_KEYS if not (isinstance(ckpt, dict) and key in ckpt)]
    if missing:
        raise UserError(f"'{path}' is not a trainer checkpoint (missing: {', '.join(missing)})")
    run_cfg = OmegaConf.create(with_current_defaults(ckpt["config"]))
    run_cfg.model.weights = None  # the checkpoint holds the weights: never read pretrained ones or the original file
    if "pretrained" in run_cfg.model:
        run_cfg.model.pretrained = False
    model_name = run_cfg.model.name
    regression = run_cfg.get("task", "classification") == "regression"
    weights = "ema" if chosen_by_ema(ckpt) else "raw"

    cpu = torch.device("cpu")  # exported in float32 from the CPU, where the check runs too
    environment.seed_everything(run_cfg.seed)
    data = assembly.build_data(run_cfg, cpu)
    if list(data.class_names) != [str(name) for name in ckpt["class_names"]]:
        raise UserError(f"the data's classes {data.class_names} differ from the checkpoint's {ckpt['class_names']}")
    model = checkpoint_model(ckpt, run_cfg, path)
    batches = exporters.first_batches(data.val_loader, cfg.check_batches)
    if not batches:
        raise UserError("the run's validation split is empty: no image to check the exported model on")
    batches.append(batches[0][:1])  # one single image: the batch axis really is dynamic

    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    tmp = temporary_file(directory, FORMATS[cfg.format])
    try:
        print(f"exporting {model_name} ({'EMA' if weights == 'ema' else 'raw'} weights of epoch {ckpt['epoch']}) "
              f"to {cfg.format}: {output}", flush=True)
        example = exporters.example_batch(batches)
        if cfg.format == "onnx":
            exporters.export_onnx(model, example, tmp, regression, model_name)
            import onnxruntime

            exported, runtime = onnx_runner(tmp, cpu), f"onnxruntime {onnxruntime.__version__}"
        else:
            exporters.export_torchscript(model, example, tmp, model_name)
            exported, runtime = torchscript_runner(tmp, cpu), f"torch.jit.load (torch {torch.__version__})"
        difference, images = exporters.max_difference(model, exported, batches, regression)
        what = "values" if regression else "probabilities"
        full = len(batches) - 1
        print(f"check: {runtime} vs PyTorch on {images} validation images ({full} batch{'es' if full > 1 else ''} and a "
              f"batch of one): max abs difference of {what} {difference:.3g} (tolerance {cfg.tolerance:g})", flush=True)
        if not difference <= cfg.tolerance:
            raise UserError(f"the exported model's {what} differ from PyTorch's by up to {difference:.3g}, more than "
                            f"tolerance={cfg.tolerance:g}; nothing was written (raise tolerance= to keep it anyway)")
        check = {"runtime": runtime, "images": images, "compared": what, "max_abs_difference": difference,
                 "tolerance": cfg.tolerance}
        info = exporters.deployment_info(cfg.format, output, path, ckpt, run_cfg, data, model_name, weights, check)
        write_json(info, info_path(output))
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"written: {output}\nwritten: {info_path(output)}")
    return info


def temporary_file(directory: str, suffix: str) -> str:
    """A new empty file beside the output: the model is written there and renamed into place once checked."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    return tmp


@hydra.main(config_path=CONF_DIR, config_name="export", version_base=None)
def main(cfg: DictConfig) -> None:
    with reported_as_exit():
        export(cfg)


if __name__ == "__main__":
    if not print_command_help("export", sys.argv):
        main()
