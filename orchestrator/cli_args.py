"""Arguments every config-driven verb shares, and how a parsed verb runs.

Verbs (`orchestrator/*_job.py`, `bench`, `cluster`) build their parsers from `add_config_args`
and run through `run_parsed`; they import this module, never the CLI (which imports them).
Overrides come in one form, `--set section.key=value` (repeatable), plus a few explicit flags
(`--method`, `--ipc`, ...) that are shorthands for the same keys; both always beat the YAML.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback

from orchestrator.errors import OrchestratorError, disk_full_cause, disk_full_error

# The students registered in trainers/models.py (tests/test_models.py checks the list): named here so that
# `--help` lists them without importing torch and timm.
SMALL_STUDENTS = ("convnet3", "convnet3_w32", "convnet3_bn", "convnet3_bn_w32", "convnet4_bn_w32", "resnet18_small")
SHORTHANDS = {"method": "data.method", "ipc": "data.ipc", "seed": "seed", "label_mode": "label_mode",
              "model": "model.name", "epochs": "schedule.epochs", "workers": "train.workers",
              "output_dir": "output_dir", "lr": "optim.lr", "batch_size": "train.batch_size"}


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="protocol YAML (configs/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set optim.lr=0.01 (repeatable)")
    parser.add_argument("--method", help="data.method: full, random, first, noise; pruning forgetting, el2n, aum, "
                                         "ccs, pca; distillation sre2l, cda, gvbsm, lpld, rded, dwa")
    parser.add_argument("--ipc", help="data.ipc (images per class; 'null' for all)")
    parser.add_argument("--seed", type=int, help="seed")
    parser.add_argument("--label-mode", choices=["hard", "soft"], help="label_mode")
    parser.add_argument("--model", help=f"model.name (student): {', '.join(SMALL_STUDENTS)} (trainers/models.py, "
                                        f"28-32 px), or any timm model such as resnet18 (ImageNet protocols)")
    parser.add_argument("--epochs", type=int, help="schedule.epochs")
    parser.add_argument("--workers", type=int, help="train.workers (Ray Train workers; 0 = local mode)")
    parser.add_argument("--lr", type=float, help="optim.lr")
    parser.add_argument("--batch-size", type=int, help="train.batch_size")
    parser.add_argument("--output-dir", help="output_dir (MLflow store, checkpoints, data cache)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")


def config_from_args(args: argparse.Namespace):
    from orchestrator.config import load_config, parse_override
    from orchestrator.data.sources import normalisation_warning

    overrides = dict(parse_override(text) for text in args.overrides)
    for flag, dotted in SHORTHANDS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[dotted] = parse_override(f"x={value}")[1] if isinstance(value, str) else value
    config = load_config(args.config, overrides)
    warning = normalisation_warning(config)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return config


def use_address(address: str | None) -> None:
    """Ray is started (or joined) lazily, only once a cell really trains; --address beats RAY_ADDRESS."""
    if address:
        os.environ["RAY_ADDRESS"] = address


def run_parsed(args: argparse.Namespace) -> int:
    """Run a parsed verb: a project error, or a full disk, becomes one `error:` line and the error's exit
    code (`orchestrator.errors`), its traceback printed only with `--verbose`."""
    from orchestrator.runtime import set_console

    verbose = getattr(args, "verbose", False)
    set_console(verbose=verbose)
    interruptible()
    try:
        return args.func(args)
    except OrchestratorError as exc:
        return report_error(exc, verbose)
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        cause = disk_full_cause(exc)
        if cause is None:
            raise
        return report_error(disk_full_error(cause, getattr(args, "output_dir", None)), verbose)


def interruptible() -> None:
    """SIGINT stops every verb, even one started in the background: a shell without job control starts
    background commands with SIGINT ignored and Python keeps it ignored, so `pkill -INT` (how a sweep is
    stopped) would otherwise reach only the phases where Ray Tune sets its own handler, not a teacher
    the driver trains before the cells."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def report_error(error: OrchestratorError, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    print(f"error: {error}", file=sys.stderr)
    return error.exit_code
