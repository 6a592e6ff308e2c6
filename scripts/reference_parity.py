"""Parity with the reference implementation (rethinkdc 0.3.2) on CPU: schedule, first-batch loss, top-1.

    python3 -m venv /tmp/refvenv --system-site-packages
    /tmp/refvenv/bin/pip install --no-deps rethinkdc==0.3.2 wandb rich
    python3 scripts/reference_parity.py --out /tmp/parity --train-epochs 10 --teacher-epochs 2 --seeds 0 1 2

Both sides read the same Fashion-MNIST image folder in ImageNet layout, written here: 10 images per
class for training, 100 per class (1,000) for validation, stored at `--size` px (224 by default,
the protocol's size) as RGB PNGs. The reference runs in its own venv (`--ref-python`) through a
shim that makes it run on CPU and changes nothing it computes: `.cuda()` is a no-op, the "need gpu"
check passes, `nn.DataParallel` is a plain wrapper (no devices), `pin_memory` is dropped,
`ImageFolderIPC.make_dataset` accepts torchvision's newer `allow_empty` argument, wandb is a stub
that records what is logged, and seeds are set (the reference has none). Its loader workers come
from the YAML (`workers: 4` in its standard files; `-j` is ignored), so the shim's copy of
standard_hard_config.yaml sets `workers: 0`. This project's side runs `rethinkdc ... --hard`
(orchestrator/rethinkdc_cli.py) with `--set eval.every=50`, the reference's evaluation cadence.

Measured: (a) the learning rate of every epoch (the reference's real loop over empty loaders, so
only its scheduler runs; ours from trainers/optim.py as the loop steps it); (b) the loss of the first
batch from the same initial weights and the same batch, and the weights after one AdamW step (the
reference's images, targets and initial ResNet-18 are captured inside its run; ours is timm's
resnet18 built by create_student with 1,000 outputs, as the reference's always has); (c) top-1 after
`--train-epochs` epochs, per seed, and the mean ± std over seeds, with hard labels and with soft labels.
For the top-1 runs the shim gives the reference's ResNet-18s 10 outputs, as many as the set has classes
(its 1,000 are ImageNet-1K's; this project's student has one output per class), so both sides train the
same network. Soft labels: both sides load the same local teacher file, a ResNet-18 (10 outputs, 224 px)
trained by this project's `teacher` verb on 200 training images per class (`--teacher-epochs`), saved
as a plain state dict: this project's side through `rethinkdc --soft --teacher-weights FILE`, the
reference's through its `torchvision.models.resnet18(pretrained=True)`, which the shim reads from the
file instead of downloading. The table is printed and written to OUT/parity.md and OUT/parity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_PER_CLASS, VAL_PER_CLASS, TEACHER_PER_CLASS = 10, 100, 200
CLASSES = 10
TEACHER_FILE = "teacher-resnet18.pth"  # the soft-label teacher both sides load: a plain state dict, 10 outputs


# ---------------------------------------------------------------- the data (this project's python)


def write_folders(out: Path, size: int) -> tuple[Path, Path, Path]:
    """out/train-<size>/c<k>/<index>.png (first 10 training images per class), out/val-<size>/... (first 100
    test images per class) and out/teacher-<size>/... (first 200 training images per class: the teacher's)."""
    from orchestrator.data.prepare import FASHION_MNIST_RAW, encode_png, load_fashion_mnist_split

    folders = {}
    for split, name, per_class in (("train", "train", TRAIN_PER_CLASS), ("test", "val", VAL_PER_CLASS),
                                   ("train", "teacher", TEACHER_PER_CLASS)):
        root = out / f"{name}-{size}"
        folders[name] = root
        if (root / "done").exists():
            continue
        images, labels = load_fashion_mnist_split(FASHION_MNIST_RAW, split)
        for label in range(10):
            (root / f"c{label}").mkdir(parents=True, exist_ok=True)
            for index in (labels == label).nonzero()[0][:per_class]:
                (root / f"c{label}" / f"{index:05d}.png").write_bytes(encode_png(images[index], size, "RGB"))
        (root / "done").write_text("")
    return folders["train"], folders["val"], folders["teacher"]


# ---------------------------------------------------------------- the reference (its venv's python)


def shim_reference(record: dict, seed: int) -> None:
    """Make rethinkdc 0.3.2 run on CPU without wandb; record what it logs. Nothing it computes changes."""
    import random
    import types

    import numpy as np
    import torch
    from torch import nn

    wandb = types.ModuleType("wandb")
    wandb.login = lambda **kwargs: None
    wandb.init = lambda **kwargs: None
    wandb.Settings = lambda **kwargs: None
    wandb.log = lambda metrics: record.setdefault("logs", []).append(
        {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    sys.modules["wandb"] = wandb
    cuda_available = torch.cuda.is_available
    torch.cuda.is_available = lambda: asked_by_reference() or cuda_available()  # its "need gpu to train!" check
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self
    nn.DataParallel = plain_wrapper_class()
    loader_init = torch.utils.data.DataLoader.__init__

    def no_pin_memory(self, *args, **kwargs):
        kwargs["pin_memory"] = False
        loader_init(self, *args, **kwargs)

    torch.utils.data.DataLoader.__init__ = no_pin_memory
    from rethinkdc.imagenet_ipc import ImageFolderIPC

    make_dataset = ImageFolderIPC.make_dataset
    ImageFolderIPC.make_dataset = staticmethod(lambda *args, allow_empty=False, **kwargs: make_dataset(*args, **kwargs))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def asked_by_reference() -> bool:
    """True for the reference's own `torch.cuda.is_available()` call (train_KD.py l.392), not torch's."""
    return sys._getframe(2).f_globals.get("__name__") == "rethinkdc.train_KD"


def plain_wrapper_class():
    from torch import nn

    class Wrapper(nn.Module):
        """nn.DataParallel on a machine without GPUs: the same `module.` names, the module's forward."""

        def __init__(self, module, *args, **kwargs):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    return Wrapper


class StopAfterFirstStep(Exception):
    """Raised by the capturing optimizer once the first step is recorded."""


def capture_first_step(out: Path, mode: str) -> None:
    """Save the reference's initial student, first batch, first loss (cross-entropy, or KL to the teacher)
    and weights after its first AdamW step, to OUT/<mode>.pt."""
    import torch
    import torchvision

    seen = {}
    build = torchvision.models.resnet18

    def resnet18(*args, **kwargs):
        model = build(*args, **kwargs)
        if kwargs.get("pretrained"):  # the teacher
            return model
        seen["initial"] = {k: v.clone() for k, v in model.state_dict().items()}
        model.register_forward_pre_hook(lambda module, inputs: seen.setdefault("images", inputs[0].clone()))
        seen["model"] = model
        return model

    torchvision.models.resnet18 = resnet18
    torchvision.models.__dict__["resnet18"] = resnet18
    cross_entropy = torch.nn.CrossEntropyLoss

    class RecordingLoss(cross_entropy):
        def forward(self, logits, target):
            loss = super().forward(logits, target)
            seen.setdefault("target", target.clone())
            seen.setdefault("loss", loss.item())
            return loss

    torch.nn.CrossEntropyLoss = RecordingLoss
    kl_divergence = torch.nn.KLDivLoss

    class RecordingKL(kl_divergence):
        def forward(self, log_probs, probs):
            loss = super().forward(log_probs, probs)
            seen.setdefault("target", torch.zeros(0))
            seen.setdefault("loss", loss.item())
            return loss

    torch.nn.KLDivLoss = RecordingKL
    adamw = torch.optim.AdamW

    class RecordingAdamW(adamw):
        def step(self, closure=None):
            super().step(closure)
            after = {k: v.detach().clone() for k, v in seen["model"].state_dict().items()}
            torch.save({"initial": seen["initial"], "images": seen["images"], "target": seen["target"],
                        "loss": seen["loss"], "after_step": after}, out / f"{mode}.pt")
            raise StopAfterFirstStep

    torch.optim.AdamW = RecordingAdamW


def empty_loaders() -> None:
    """Schedule only: the reference's real loop over loaders that yield no batch, so only its scheduler runs."""
    import torch

    class NoBatches(torch.utils.data.DataLoader):
        def __iter__(self):
            return iter(())

        def __len__(self):
            return 0

    torch.utils.data.DataLoader = NoBatches


def reference_yaml(out: Path, labels: str) -> Path:
    """The reference's standard_<labels>_config.yaml with `workers: 0` (its `-j` never overrides the YAML)."""
    import importlib.resources

    import yaml

    reference_config = importlib.resources.files("rethinkdc").joinpath(f"dc_config/standard_{labels}_config.yaml")
    values = yaml.safe_load(reference_config.read_text())
    values["workers"] = 0
    path = out / f"reference_{labels}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def resnets_with_the_sets_classes(teacher_file: Path) -> None:
    """The reference's ResNet-18s get as many outputs as the set has classes (its 1,000 are ImageNet-1K's,
    where the two agree), and its `pretrained=True` teacher is the local teacher file, not a download."""
    import torch
    import torchvision

    build = torchvision.models.resnet18

    def resnet18(*args, pretrained=False, **kwargs):
        model = build(*args, num_classes=CLASSES, **kwargs)
        if pretrained:
            model.load_state_dict(torch.load(teacher_file, weights_only=True))
        return model

    torchvision.models.resnet18 = resnet18
    torchvision.models.__dict__["resnet18"] = resnet18


def run_reference(args: argparse.Namespace) -> None:
    """Child process, in the reference's venv: one reference run in the requested mode; JSON on disk."""
    out = Path(args.out)
    record: dict = {"mode": args.child, "seed": args.seed, "epochs": args.epochs}
    shim_reference(record, args.seed)
    labels = "soft" if args.child.endswith("soft") else "hard"
    if args.child.startswith("train") or args.child == "first-step-soft":
        resnets_with_the_sets_classes(out / TEACHER_FILE)
    if args.child.startswith("first-step"):
        capture_first_step(out, args.child)
    if args.child == "schedule":
        empty_loaders()
    os.environ["IMAGENET_VAL_DIR"] = args.val
    sys.argv = ["rethinkdc", args.train, "--yaml", str(reference_yaml(out, labels)), "--epochs", str(args.epochs),
                "--ipc", str(TRAIN_PER_CLASS), "--output-dir", str(out / f"ref-{args.child}-s{args.seed}")]
    from rethinkdc.train_KD import main

    try:
        main()
    except StopAfterFirstStep:
        pass
    (out / f"ref-{args.child}-s{args.seed}.json").write_text(json.dumps(record))


# ---------------------------------------------------------------- this project's side and the comparison


def reference(args: argparse.Namespace, mode: str, epochs: int, seed: int = 0) -> dict:
    """Run the reference in its venv (unless a finished run of the same mode, seed and epochs is on disk);
    return what it logged."""
    done = Path(args.out) / f"ref-{mode}-s{seed}.json"
    if mode.startswith("train") and done.is_file() and json.loads(done.read_text()).get("epochs") == epochs:
        return json.loads(done.read_text())
    command = [args.ref_python, str(Path(__file__).resolve()), "--child", mode, "--out", str(args.out),
               "--train", str(args.train), "--val", str(args.val), "--epochs", str(epochs), "--seed", str(seed)]
    subprocess.run(command, check=True, cwd="/tmp", stdout=subprocess.DEVNULL if mode == "schedule" else None)
    return json.loads((Path(args.out) / f"ref-{mode}-s{seed}.json").read_text())


def our_schedule(epochs: int) -> list[float]:
    """The learning rate of each epoch as trainers/loop.py sees it (read at the epoch's start, stepped at its end)."""
    from trainers.models import create_student
    from trainers.optim import build_optimizer, build_scheduler

    model = create_student("resnet18", num_classes=10, in_chans=3, img_size=224)
    optimizer = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.01)
    scheduler = build_scheduler(optimizer, epochs=epochs)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def compare_schedules(args: argparse.Namespace) -> dict:
    logs = reference(args, "schedule", args.schedule_epochs)["logs"]
    theirs = [entry["train/lr"] for entry in logs if "train/lr" in entry]
    ours = our_schedule(args.schedule_epochs)
    return {"epochs": len(ours), "reference_epochs": len(theirs),
            "max_abs_diff": max(abs(a - b) for a, b in zip(theirs, ours)), "reference": theirs, "ours": ours}


def compare_first_step(args: argparse.Namespace, labels: str = "hard") -> dict:
    """Our student, loss and optimizer from the reference's initial weights on the reference's first batch
    (hard: its 1,000-output student and cross-entropy; soft: 10 outputs and the KD loss against the teacher
    file, on its cutmix batch)."""
    import torch

    from trainers.losses import hard_loss, kd_loss
    from trainers.models import create_student
    from trainers.optim import build_optimizer

    mode = "first-step" if labels == "hard" else "first-step-soft"
    reference(args, mode, 1)
    captured = torch.load(Path(args.out) / f"{mode}.pt", weights_only=True)
    model = create_student("resnet18", num_classes=1000 if labels == "hard" else CLASSES, in_chans=3, img_size=224)
    model.load_state_dict({k.removeprefix("module."): v for k, v in captured["initial"].items()})
    model.train()
    optimizer = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.01)
    logits = model(captured["images"])
    if labels == "hard":
        loss = hard_loss(logits, captured["target"])
    else:
        teacher = create_student("resnet18", num_classes=CLASSES, in_chans=3, img_size=224)
        teacher.load_state_dict(torch.load(Path(args.out) / TEACHER_FILE, weights_only=True))
        with torch.no_grad():
            teacher_logits = teacher.eval()(captured["images"])
        loss = kd_loss(logits, teacher_logits, temperature=20.0)
    loss.backward()
    optimizer.step()
    after = {k.removeprefix("module."): v for k, v in captured["after_step"].items()}
    diffs = [(name, (value - after[name]).abs().max().item()) for name, value in model.state_dict().items()
             if value.is_floating_point()]
    worst = max(diffs, key=lambda pair: pair[1])
    return {"batch": list(captured["images"].shape), "reference_loss": captured["loss"], "our_loss": loss.item(),
            "weights_after_step_max_abs_diff": worst[1], "worst_tensor": worst[0],
            "step_moved_parameters_max_abs": max((after[name] - captured["initial"][name]).abs().max().item()
                                                 for name, _ in model.named_parameters())}


def our_top1(args: argparse.Namespace, seed: int, labels: str) -> float:
    """Top-1 of this project's cell run by its `rethinkdc` command (hard.yaml or soft.yaml)."""
    from orchestrator.rethinkdc_cli import main
    from orchestrator.store_retry import retrying_client

    out_dir = Path(args.out) / "ours"
    teacher = ["--teacher-weights", str(Path(args.out) / TEACHER_FILE)] if labels == "soft" else []
    code = main([str(args.train), f"--{labels}", *teacher, "--val-dir", str(args.val), "--epochs",
                 str(args.train_epochs), "--ipc", str(TRAIN_PER_CLASS), "--seed", str(seed), "--output-dir",
                 str(out_dir), "--set", "eval.every=50", "--set", "train.threads=0"])
    if code:
        raise SystemExit(f"our cell failed (exit {code})")
    client = retrying_client(f"sqlite:///{out_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"imagenet-{labels}").experiment_id
    run = client.search_runs([experiment], filter_string=f"params.seed = '{seed}' and tags.role = 'cell' and "
                             f"attributes.status = 'FINISHED' and params.`schedule.epochs` = '{args.train_epochs}'",
                             order_by=["attributes.start_time DESC"])[0]
    return run.data.metrics["val/top1_final"]


def compare_top1(args: argparse.Namespace, labels: str) -> dict:
    """Top-1 of both sides per seed, their mean and sample std, and whether the means differ by less
    than the larger seed spread."""
    import statistics

    rows = []
    for seed in args.seeds:
        mode = "train-soft" if labels == "soft" else "train"
        logs = reference(args, mode, args.train_epochs, seed)["logs"]
        theirs = [entry["val/top1"] for entry in logs if "val/top1" in entry][-1]
        rows.append({"seed": seed, "reference": theirs, "ours": our_top1(args, seed, labels)})
    summary = {side: (statistics.mean(r[side] for r in rows),
                      statistics.stdev(r[side] for r in rows) if len(rows) > 1 else 0.0)
               for side in ("reference", "ours")}
    spread = max(summary["reference"][1], summary["ours"][1])
    gap = summary["ours"][0] - summary["reference"][0]
    return {"epochs": args.train_epochs, "labels": labels, "rows": rows, "mean_std": summary,
            "within_seed_spread": abs(gap) <= spread}


def train_teacher(args: argparse.Namespace) -> dict:
    """The soft-label teacher both sides load: ResNet-18 (10 outputs, 224 px) trained by this project's
    `teacher` verb on the teacher folder, saved as a plain state dict with torchvision's names."""
    import torch

    from orchestrator.config import load_config
    from orchestrator.store_retry import retrying_client
    from orchestrator.teacher_job import train_teacher as train

    config = load_config(REPO / "configs" / "soft.yaml", {
        "data.train": str(args.teacher_dir), "data.val": str(args.val), "data.source_template": None,
        "output_dir": str(Path(args.out) / "teacher"), "teacher.source": "auto",
        "teacher.epochs": args.teacher_epochs, "teacher.batch_size": 64, "train.workers": 0,
        "train.use_gpu": None, "train.threads": 0, "prune.score_runs": 1})  # the teacher run only
    path = train(config)
    torch.save(torch.load(path, weights_only=True)["state_dict"], Path(args.out) / TEACHER_FILE)
    client = retrying_client(f"sqlite:///{config.out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(config.experiment_name).experiment_id
    run = client.search_runs([experiment], order_by=["attributes.start_time DESC"], max_results=1)[0]
    return {"images": TEACHER_PER_CLASS * 10, "epochs": args.teacher_epochs,
            "top1": run.data.metrics.get("val/top1_final")}


def table(results: dict, args: argparse.Namespace) -> str:
    lines = ["| check | reference (rethinkdc 0.3.2) | this project | difference |", "|---|---|---|---|"]
    if "schedule" in results:
        s = results["schedule"]
        lines.append(f"| lr at each of {s['epochs']} epochs | {s['reference'][0]:.6f} … {s['reference'][-1]:.6f} "
                     f"| {s['ours'][0]:.6f} … {s['ours'][-1]:.6f} | max abs {s['max_abs_diff']:.1e} |")
    for key, labels in (("first_step", "hard"), ("first_step_soft", "soft")):
        if key in results:
            f = results[key]
            lines.append(f"| first-batch loss, {labels} labels, same weights and batch ({f['batch'][0]} images) | "
                         f"{f['reference_loss']:.6f} | {f['our_loss']:.6f} | "
                         f"{abs(f['reference_loss'] - f['our_loss']):.1e} |")
            lines.append(f"| parameters and BatchNorm statistics after one AdamW step, {labels} labels (it moved "
                         f"parameters by up to {f['step_moved_parameters_max_abs']:.1e}) | | | "
                         f"max abs {f['weights_after_step_max_abs_diff']:.1e} |")
    for key in ("top1", "top1_soft"):
        lines.extend(top1_rows(results.get(key)))
    teacher = results.get("teacher")
    note = (f"; teacher: ResNet-18, {teacher['images']} images, {teacher['epochs']} epochs, "
            f"top-1 {teacher['top1']:.2f} %" if teacher else "")
    return "\n".join(lines) + f"\n\nimages stored at {args.size} px{note}\n"


def top1_rows(top1: dict | None) -> list[str]:
    if not top1:
        return []
    labels = top1.get("labels", "hard")
    lines = [f"| top-1 %, {labels} labels, {top1['epochs']} epochs, seed {row['seed']} | {row['reference']:.2f} "
             f"| {row['ours']:.2f} | {row['ours'] - row['reference']:+.2f} |" for row in top1["rows"]]
    if "mean_std" in top1 and len(top1["rows"]) > 1:
        (ref_mean, ref_std), (our_mean, our_std) = top1["mean_std"]["reference"], top1["mean_std"]["ours"]
        verdict = "within" if top1["within_seed_spread"] else "outside"
        lines.append(f"| **top-1 %, {labels} labels, mean ± std over {len(top1['rows'])} seeds** | {ref_mean:.2f} ± "
                     f"{ref_std:.2f} | {our_mean:.2f} ± {our_std:.2f} | {our_mean - ref_mean:+.2f} ({verdict} the "
                     f"seed spread) |")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/parity", help="folder for the image folders, runs and the table")
    parser.add_argument("--size", type=int, default=224, help="stored image size (the protocol: 224)")
    parser.add_argument("--ref-python", default="/tmp/refvenv/bin/python", help="python of the reference's venv")
    parser.add_argument("--schedule-epochs", type=int, default=30)
    parser.add_argument("--train-epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0], help="top-1 seeds (none: skip top-1)")
    parser.add_argument("--teacher-epochs", type=int, default=4, help="the soft-label teacher's epochs")
    parser.add_argument("--only", nargs="*", default=["schedule", "first_step", "top1", "teacher", "first_step_soft",
                                                      "top1_soft"],
                        help="checks to run; the others keep their results from OUT/parity.json")
    parser.add_argument("--child", choices=["schedule", "first-step", "first-step-soft", "train", "train-soft"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--val", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.child:
        run_reference(args)
        return 0
    sys.path.insert(0, str(REPO))
    args.out = Path(args.out).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.train, args.val, args.teacher_dir = write_folders(args.out, args.size)
    checks = {"schedule": compare_schedules, "first_step": compare_first_step,
              "top1": lambda a: compare_top1(a, "hard"), "teacher": train_teacher,
              "top1_soft": lambda a: compare_top1(a, "soft"),
              "first_step_soft": lambda a: compare_first_step(a, "soft")}
    kept = args.out / "parity.json"  # checks not in --only keep their last results
    results = json.loads(kept.read_text()) if kept.is_file() else {}
    for name in args.only:  # in order: the teacher is trained before the soft cells read it
        if args.seeds or not name.startswith("top1"):
            results[name] = checks[name](args)
            (args.out / "parity.json").write_text(json.dumps(results, indent=2))
    (args.out / "parity.md").write_text(table(results, args))
    print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
