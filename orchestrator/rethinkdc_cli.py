"""`rethinkdc`: the reference benchmark's own command line (rethinkdc 0.3.2), running one cell here.

    rethinkdc TRAIN_DIR --hard|--soft|--yaml FILE [reference options] [--set KEY=VALUE ...]
    python -m orchestrator rethinkdc TRAIN_DIR ...           (the same command)

Every option of the reference's `train_KD.py` is accepted with its meaning and default
(docs/rethinkdc-cli.md maps each to the config key it sets). Its values resolve as in the
reference: the option's default, then the standard YAML (`--hard`, `--soft`) or a flat `--yaml`
file with the same keys, then the options given on the command line. The result becomes overrides
of configs/hard.yaml (hard labels) or configs/soft.yaml (soft labels) and runs as one cell through
`orchestrator.cell.run_cell`, tracked in MLflow under `--output-dir`. The reference's defects are
not reproduced (docs/protocol.md §Deviations): `-j` and `-T` work in short form, the validation
folder comes from `--val-dir` or else `IMAGENET_VAL_DIR`, `--ipc` is honoured for hub sets, and
wandb is never needed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import yaml

from orchestrator.cli_args import run_parsed, use_address
from orchestrator.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = {"hard": REPO / "configs" / "hard.yaml", "soft": REPO / "configs" / "soft.yaml"}
VAL_ENV = "IMAGENET_VAL_DIR"

# The reference's argparse defaults (rethinkdc 0.3.2, train_KD.py l.113-170).
REFERENCE_DEFAULTS = {
    "train_dir": None, "batch_size": 1024, "gradient_accumulation_steps": 1, "workers": 16,
    "val_dir": "/path/to/imagenet/val", "output_dir": "./save/1024", "hf_cache_dir": "./hf_cache",
    "mode": "fkd_save", "cos": False, "adamw_lr": 0.001, "adamw_weight_decay": 0.01, "sgd_setting": False,
    "hard_label": False, "start_epoch": 0, "epochs": 300, "model": "resnet18", "teacher_model": None,
    "temperature": 3.0, "mix_type": None, "mixup": 0.8, "cutmix": 1.0, "ipc": 50,
    "wandb_project": "Temperature", "wandb_api_key": None,
}
# Its dc_config/standard_{hard,soft}_config.yaml: they differ only in mix_type and hard_label.
STANDARD_YAML = {
    "batch_size": 128, "gradient_accumulation_steps": 1, "start_epoch": 0, "epochs": 300, "workers": 4,
    "cos": True, "adamw_lr": 0.001, "adamw_weight_decay": 0.01, "teacher_model": "resnet18",
    "temperature": 20.0, "wandb_project": "demo-rethink-dc", "wandb_api_key": None, "mix_type": "None",
    "mixup": 0.8, "cutmix": 1.0, "hard_label": True, "sgd_setting": False, "mode": "fkd_save",
    "hf_cache_dir": "./hf_cache",
}
STANDARD = {"hard": {**STANDARD_YAML}, "soft": {**STANDARD_YAML, "mix_type": "cutmix", "hard_label": False}}
SGD_SETTING = {"optim.name": "sgd", "optim.lr": 0.1, "optim.momentum": 0.9, "optim.weight_decay": 1e-4}
NO_EFFECT = {"workers": "decoding happens once in the driver (or in Ray Data tasks), not in loader workers"}
EPILOG = ("Defaults are the reference's argparse defaults; --hard and --soft apply its standard YAML over them "
          "(batch 128, 300 epochs, cos, T 20, hard_label true / false, mix None / cutmix), as the reference does. "
          "Each option's config key: docs/rethinkdc-cli.md")
HUB_KEY = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, not ./x or /x


# ---------------------------------------------------------------- the parser


def add_reference_args(parser: argparse.ArgumentParser) -> None:
    """The reference's options, grouped as in its help; defaults are applied later (see resolve)."""
    config = parser.add_argument_group("Configuration Options").add_mutually_exclusive_group()
    config.add_argument("--soft", action="store_true", help="standard soft-label protocol (configs/soft.yaml)")
    config.add_argument("--hard", action="store_true", help="standard hard-label protocol (configs/hard.yaml)")
    config.add_argument("--yaml", help="a flat YAML of these options' names (the reference's config format)")
    data = parser.add_argument_group("Data Options")
    data.add_argument("train_dir", nargs="?", help="training set: image folder (one sub-folder per class) or hub key")
    reference_option(data, "--batch-size", type=int, help="loader batch; the optimizer batch is this x accumulation")
    reference_option(data, "--gradient-accumulation-steps", type=int, help="batches per optimizer step")
    reference_option(data, "-j", "--workers", type=int, help="data loading workers (no effect here)")
    reference_option(data, "--val-dir", help=f"validation folder (else ${VAL_ENV})")
    reference_option(data, "--output-dir", help="output dir: MLflow store, checkpoints, data cache")
    reference_option(data, "--hf-cache-dir", help="Hugging Face datasets cache (HF_DATASETS_CACHE)")
    reference_option(data, "--mode", help="fkd_save (the only mode train_KD runs)")
    train = parser.add_argument_group("Training Options")
    reference_option(train, "--cos", action="store_true", help="cosine lr schedule (the only one here)")
    reference_option(train, "--adamw-lr", type=float, help="AdamW learning rate")
    reference_option(train, "--adamw-weight-decay", type=float, help="AdamW weight decay")
    reference_option(train, "--sgd-setting", action="store_true", help="SGD lr 0.1, momentum 0.9, wd 1e-4, cosine")
    reference_option(train, "--hard-label", action="store_true", help="hard labels (cross-entropy)")
    reference_option(train, "--start-epoch", type=int, help="start epoch (0; cells resume by themselves)")
    reference_option(train, "--epochs", type=int, help="total epochs")
    model = parser.add_argument_group("Model Options")
    reference_option(model, "--model", help="student model name")
    reference_option(model, "--teacher-model", help="teacher model name (pretrained ImageNet weights)")
    reference_option(model, "-T", "--temperature", type=float, help="temperature of the distillation loss")
    mix = parser.add_argument_group("Mixup/CutMix Options")
    reference_option(mix, "--mix-type", help="mixup, cutmix or None")
    reference_option(mix, "--mixup", type=float, help="mixup alpha")
    reference_option(mix, "--cutmix", type=float, help="cutmix alpha")
    reference_option(mix, "--ipc", type=int, help="images per class")
    wandb = parser.add_argument_group("Wandb Options")
    reference_option(wandb, "--wandb-project", help="accepted; runs are tracked in MLflow instead")
    reference_option(wandb, "--wandb-api-key", help="accepted; runs are tracked in MLflow instead")
    add_project_args(parser.add_argument_group("This project's options (not in the reference)"))


def reference_option(group, *names: str, help: str, **kwargs) -> None:
    """An option whose absence means "not given" (SUPPRESS), its reference default shown in the help."""
    dest = names[-1].lstrip("-").replace("-", "_")
    shown = REFERENCE_DEFAULTS[dest]
    group.add_argument(*names, dest=dest, default=argparse.SUPPRESS,
                       help=f"{help} (default: {shown})".replace("%", "%%"), **kwargs)


def add_project_args(group) -> None:
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key after the options, e.g. --set data.image_size=32")
    group.add_argument("--seed", type=int, default=0, help="seed (the reference has none; default 0)")
    group.add_argument("--teacher-weights", metavar="FILE",
                       help="local weights of the soft-label teacher (teacher.source), e.g. torchvision's "
                            "resnet18-f37072fd.pth, instead of downloading them")
    group.add_argument("--force", action="store_true", help="retrain even if this cell already finished")
    group.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")


def add_rethinkdc_parser(subparsers) -> argparse.ArgumentParser:
    """The `rethinkdc` verb of `python -m orchestrator`."""
    parser = subparsers.add_parser("rethinkdc", help="the reference's own command line: one cell from its options",
                                   description=__doc__.split("\n")[0], epilog=EPILOG)
    add_reference_args(parser)
    parser.set_defaults(func=cmd_rethinkdc)
    return parser


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rethinkdc", description=__doc__.split("\n")[0],
                                     epilog=EPILOG)
    add_reference_args(parser)
    parser.add_argument("--verbose", "-v", action="store_true", help="print Ray's own logs on the console too")
    parser.set_defaults(func=cmd_rethinkdc)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `rethinkdc` console script."""
    return run_parsed(get_args_parser().parse_args(argv))


# ---------------------------------------------------------------- reference values -> config


def given_options(args: argparse.Namespace) -> dict:
    """The reference options spelled on the command line (the others were SUPPRESSed)."""
    return {key: value for key, value in vars(args).items() if key in REFERENCE_DEFAULTS}


def read_reference_yaml(path: str) -> dict:
    """A `--yaml` file: the reference's flat format, keys named like the options."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"--yaml {path} does not exist: pass a flat YAML of option names "
                          f"(e.g. batch_size: 128, hard_label: true)")
    values = yaml.safe_load(file.read_text()) or {}
    unknown = sorted(set(values) - set(REFERENCE_DEFAULTS))
    if not isinstance(values, dict) or unknown:
        raise ConfigError(f"--yaml {path}: unknown keys {unknown}; valid keys: {', '.join(REFERENCE_DEFAULTS)}")
    return values


def resolve(args: argparse.Namespace) -> dict:
    """The reference's values: its defaults, then the YAML (--hard, --soft, --yaml), then given options.

    The validation folder: --val-dir, else $IMAGENET_VAL_DIR, else the --yaml file's `val_dir`."""
    if not (args.hard or args.soft or args.yaml):
        raise ConfigError("pass --hard, --soft or --yaml FILE: the protocol the options modify")
    file_values = read_reference_yaml(args.yaml) if args.yaml else STANDARD["soft" if args.soft else "hard"]
    values = {**REFERENCE_DEFAULTS, **file_values, **given_options(args)}
    values["val_dir"] = given_options(args).get("val_dir") or os.environ.get(VAL_ENV) or file_values.get("val_dir")
    return values


def overrides_from(values: dict) -> dict:
    """Config overrides (dotted keys) for the reference's values; docs/rethinkdc-cli.md is this table."""
    check_supported(values)
    accum = values["gradient_accumulation_steps"]
    mix_type = "none" if str(values["mix_type"]).lower() in ("none", "null", "") else values["mix_type"]
    overrides = {
        "label_mode": "hard" if values["hard_label"] else "soft",
        "data.train": values["train_dir"], "data.method": "first", "data.ipc": values["ipc"],
        "data.source_template": None, "data.val": values["val_dir"], "output_dir": values["output_dir"],
        "variant": Path(values["train_dir"].rstrip("/")).name,
        "train.batch_size": values["batch_size"] * accum, "train.grad_accum": accum,
        "train.workers": 0, "train.use_gpu": None,  # one process, its GPU when there is one, as the reference
        "schedule.epochs": values["epochs"], "model.name": values["model"],
        "optim.name": "adamw", "optim.lr": values["adamw_lr"], "optim.weight_decay": values["adamw_weight_decay"],
        "teacher.temperature": values["temperature"], "mix.type": mix_type,
        "mix.mixup_alpha": values["mixup"], "mix.cutmix_alpha": values["cutmix"],
    }
    if values["teacher_model"]:
        overrides.update({"teacher.model": values["teacher_model"],
                          "teacher.source": f"timm:{values['teacher_model']}.tv_in1k"})
    if values["sgd_setting"]:
        overrides.update(SGD_SETTING)
    return overrides


def check_supported(values: dict) -> None:
    """Reference values that have no counterpart here, each a one-line ConfigError with the fix."""
    if not values["cos"]:
        raise ConfigError("cos: false (the reference's linear schedule) is not supported: the protocol's "
                          "schedule is cosine; set cos: true")
    if values["mode"] != "fkd_save":
        raise ConfigError(f"--mode {values['mode']}: only fkd_save (labels on the fly) runs in train_KD; "
                          f"stored soft labels (fkd_load) are not supported")
    if values["start_epoch"] != 0:
        raise ConfigError("--start-epoch must be 0: an interrupted cell resumes from its own checkpoint "
                          "when the same command runs again")
    if not values["hard_label"] and not values["teacher_model"]:
        raise ConfigError("soft labels need --teacher-model (e.g. resnet18)")
    if str(values["mix_type"]).lower() == "cutout":
        raise ConfigError("--mix-type cutout is not supported: choose mixup, cutmix or None")


def check_train_dir(train_dir: str | None) -> None:
    """A missing TRAIN_DIR is one line naming the path and the fix (a hub key is checked when read)."""
    if not train_dir:
        raise ConfigError("no TRAIN_DIR given: pass the training set, an image folder with one "
                                "sub-folder per class or a hub key, e.g. `rethinkdc ./train --hard`")
    if not Path(train_dir).expanduser().exists() and not HUB_KEY.match(train_dir):
        raise DataError(f"TRAIN_DIR {train_dir} does not exist: pass an image folder with one "
                                f"sub-folder per class (ImageNet layout) or a hub key like "
                                f"he-yang/2025-rethinkdc-imagenet-random-ipc-10")


def config_from_reference(args: argparse.Namespace):
    """configs/hard.yaml or configs/soft.yaml + the reference's values + --set / --seed / --teacher-weights."""
    from orchestrator.config import load_config, parse_override

    values = resolve(args)
    check_train_dir(values["train_dir"])
    if not values["val_dir"]:
        raise ConfigError(f"no validation folder: pass --val-dir DIR or set {VAL_ENV} (one sub-folder per class)")
    overrides = overrides_from(values)
    overrides["seed"] = args.seed
    if args.teacher_weights:
        overrides["teacher.source"] = args.teacher_weights
    overrides.update(parse_override(text) for text in args.overrides)
    return load_config(PROTOCOLS[overrides["label_mode"]], overrides)


def say_what_is_unused(args: argparse.Namespace, tracking_uri: str, experiment: str) -> None:
    """Options accepted for the reference's sake that change nothing here: said once, on stderr."""
    given = given_options(args)
    for option, why in NO_EFFECT.items():
        if option in given:
            print(f"note: --{option.replace('_', '-')} has no effect here: {why}", file=sys.stderr)
    if any(option.startswith("wandb") for option in given):
        print(f"note: wandb is not used: this run is tracked in MLflow at {tracking_uri}, experiment "
              f"{experiment!r} (`python -m orchestrator ui --tracking-uri {tracking_uri}`)", file=sys.stderr)


def cmd_rethinkdc(args: argparse.Namespace) -> int:
    from orchestrator.tracking import tracking_uri

    if "hf_cache_dir" in given_options(args):
        os.environ["HF_DATASETS_CACHE"] = str(Path(args.hf_cache_dir).expanduser().resolve())
    config = config_from_reference(args)
    say_what_is_unused(args, tracking_uri(config), config.experiment_name)
    use_address(args.address)
    from orchestrator.cell import run_cell

    run_cell(config, force=args.force)  # prints the cell's result line and where its MLflow run is
    return 0
