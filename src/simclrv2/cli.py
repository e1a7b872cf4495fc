"""Command line: ``simclrv2 {pretrain,finetune,distill,supervised,evaluate,pipeline,embed,predict,export} ...``.

Configuration comes from a preset (``--preset``), then a YAML file (``--config``), then ``key=value``
overrides; a stage that starts from a checkpoint starts from the config saved in it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

from simclrv2 import __version__, checkpoint, distributed
from simclrv2.config import (Config, ConfigError, folder_defaults, from_dict, load_yaml, merge, parse_overrides, preset,
                             preset_names, resolve_recipe)
from simclrv2.data.datasets import DATASETS, DataError
from simclrv2.errors import UserError
from simclrv2.eval import command as evaluate_command
from simclrv2.inference import InferenceError, commands as inference_commands
from simclrv2.official.tf_import import HEAD_INPUTS
from simclrv2.train import summary
from simclrv2.train.loop import Interrupted

# The user's to fix: one line and exit code 2. UserError is the base class to subclass; the others
# predate it. OSError covers files and disks (missing, unreadable, read-only, full).
ERRORS = (UserError, ConfigError, DataError, InferenceError, Interrupted, OSError)


def _message(e: BaseException) -> str:
    """The error as one line."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
        hint = {"EROFS": "the file system is read-only", "ENOSPC": "free some space or choose another --out",
                "EDQUOT": "free some space or choose another --out",
                "EACCES": "check the permissions"}.get(errno_name(e.errno), "")
        text = f"{e.strerror}: {where}" if e.filename else e.strerror
        return f"{text}; {hint}" if hint else text
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def errno_name(number: int | None) -> str:
    import errno

    return errno.errorcode.get(number or 0, "")


def _common(p: argparse.ArgumentParser, out_default: str | None = None, run_dir: bool = True) -> None:
    """Flags shared by the stages; ``run_dir=False`` (evaluate) leaves out what only a training run uses."""
    if run_dir:
        p.add_argument("--preset", choices=preset_names(),
                       help="named hyperparameter preset (default: digits without --data, else folder)")
    p.add_argument("--config", help="YAML config file (applied after the preset)")
    p.add_argument("--data", help="dataset path (torchvision root or ImageFolder tree)")
    p.add_argument("--dataset", choices=DATASETS, help="dataset kind (default: the preset's)")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--strict", action="store_true", help="fail on unreadable images instead of skipping them")
    p.add_argument("--out", required=out_default is None, default=out_default,
                   help="run directory" if run_dir else "directory for evaluation.json (optional)")
    if run_dir:
        p.add_argument("--resume", action="store_true",
                       help="continue from RUN_DIR/last (automatic when it holds a checkpoint of the same config)")
        p.add_argument("--overwrite", action="store_true", help="replace a run of a different config in --out")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. epochs=10 lr=0.3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simclrv2", description="SimCLRv2: contrastive pretraining, few-label fine-tuning and distillation.",
        epilog="Config: --preset, then --config FILE, then key=value overrides (e.g. epochs=10 pretrain.lr=0.3).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="contrastive pretraining without labels")
    _common(p)

    p = sub.add_parser("finetune", help="fine-tune a pretrained encoder on a labeled subset")
    p.add_argument("--pretrained", required=True, help="pretrain checkpoint, e.g. RUN_DIR/last")
    _labels_args(p)
    _common(p)

    p = sub.add_parser("distill", help="distill a fine-tuned teacher into a student on all images")
    p.add_argument("--teacher", required=True, help="classifier checkpoint, e.g. RUN_DIR2/best")
    p.add_argument("--student", help="student encoder (default: the teacher's)")
    p.add_argument("--student-width", type=float, help="student width multiplier (default: the teacher's)")
    _labels_args(p)
    _common(p)

    p = sub.add_parser("supervised", help="supervised baseline from scratch on the labeled subset")
    _labels_args(p)
    _common(p)

    p = sub.add_parser("evaluate", help="kNN and linear evaluation (pretrained) or accuracy (classifier)")
    evaluate_command.add_arguments(p)
    _common(p, out_default="", run_dir=False)

    p = sub.add_parser("pipeline", help="pretrain, then fine-tune, distill and a supervised baseline per label fraction")
    p.add_argument("--labels", help="comma-separated label fractions, e.g. 0.01,0.1")
    p.add_argument("--student", help="student encoder for big-to-small distillation")
    p.add_argument("--student-width", type=float, help="student width multiplier")
    _common(p, out_default="runs/pipeline")
    inference_commands.add_parsers(sub)  # embed, predict, export

    p = sub.add_parser("import-tf", help="convert an official SimCLRv2 TensorFlow checkpoint into ours")
    p.add_argument("src", help="TF1 checkpoint directory or model.ckpt-N prefix, SavedModel or TF-Hub module directory")
    p.add_argument("--out", required=True, help="writes OUT/pretrain and, with a supervised head, OUT/classifier")
    p.add_argument("--arch", help="expected architecture, e.g. r50_1x_sk1 (default: inferred from the tensors)")
    p.add_argument("--ema", action="store_true", help="take the ema_model/ copy of the weights")
    p.add_argument("--head-input", choices=HEAD_INPUTS, default="auto",
                   help="what the supervised head reads: encoder output or projection-head layer nl_K output "
                        "(auto: nl_0 for finetuned_1pct/10pct paths, else the encoder)")
    return parser


def _labels_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", type=float, help="labeled fraction of the training split, in (0, 1]")
    g.add_argument("--labels-per-class", type=int, help="labeled images per class")
    g.add_argument("--labels-file", help="file listing the labeled images, one name per line")


def resolve_config(args: argparse.Namespace, stage: str, base: Config | None = None) -> Config:
    """Preset (or the checkpoint's config), YAML file, flags, overrides; validated."""
    chosen = getattr(args, "preset", None)
    name = chosen or (default_preset(args) if base is None else None)
    cfg = preset(name) if name else base
    if name == "folder" and args.data:
        cfg = merge(cfg, _surveyed_folder(args.data, explicit=bool(chosen), recipe=_recipe(args, cfg, stage)),
                    where="folder defaults")
    if args.config:
        cfg = merge(cfg, load_yaml(args.config), where=args.config)
    flags: dict[str, Any] = {}
    if args.data:
        flags.setdefault("data", {})["path"] = args.data
        if not args.dataset and cfg.data.dataset == "digits":  # the embedded digits have no path: --data is a folder
            flags["data"]["dataset"] = "folder"
    if args.dataset:
        flags.setdefault("data", {})["dataset"] = args.dataset
    if args.download:
        flags.setdefault("data", {})["download"] = True
    if args.strict:
        flags.setdefault("data", {})["strict"] = True
    if args.device:
        flags["device"] = args.device
    if getattr(args, "labels", None) is not None:
        if stage == "pipeline":
            flags["label_fractions"] = args.labels
        else:
            flags.update(labels=args.labels, labels_per_class=None, labels_file=None)
    if getattr(args, "labels_per_class", None) is not None:
        flags.update(labels_per_class=args.labels_per_class, labels_file=None)
    if getattr(args, "labels_file", None):
        flags["labels_file"] = args.labels_file
    if getattr(args, "student", None):
        flags.setdefault("distill", {})["student"] = args.student
    if getattr(args, "student_width", None) is not None:
        flags.setdefault("distill", {})["student_width"] = args.student_width
    cfg = merge(cfg, flags, where="command line")
    cfg = merge(cfg, parse_overrides(args.overrides, stage), where="override")
    return cfg.validate()


def default_preset(args: argparse.Namespace) -> str:
    """The preset used without ``--preset``: the embedded digits without ``--data``, the CIFAR recipe for
    torchvision's CIFAR files, and otherwise defaults for photographs (``folder``)."""
    if not args.data:
        return "digits"
    if args.dataset in ("cifar10", "cifar100"):
        return "cifar10"
    return "folder"


def _recipe(args: argparse.Namespace, cfg: Config, stage: str) -> tuple[str, str]:
    """The folder recipe asked for (``recipe=``, else the config file's, else the preset's) with ``auto``
    resolved by the device asked for; and why, when it was ``auto``."""
    later = {**(load_yaml(args.config) if args.config else {}), **parse_overrides(args.overrides, stage)}
    device = args.device or str(later.get("device", cfg.device))
    asked = str(later.get("recipe", cfg.recipe))
    recipe = resolve_recipe(asked, device)
    return recipe, ("" if asked != "auto" else "no GPU" if device == "auto" else f"device={device}")


def _surveyed_folder(path: str, explicit: bool, recipe: tuple[str, str] = ("full", "")) -> dict[str, Any]:
    """``folder_defaults`` of the images under ``path`` for ``recipe`` (and why it was chosen), and a line
    saying what was chosen."""
    from simclrv2.data.survey import recipe_line, survey_folder

    sides, count = survey_folder(path)
    values = {"recipe": recipe[0], **folder_defaults(sides, count, recipe[0])}
    if sides:
        how = "--preset folder" if explicit else "--data without --preset"
        logging.getLogger("simclrv2").info("%s: %s", how, recipe_line(sides, count, recipe[0],
                                                                     folder_defaults(sides, count), recipe[1]))
    return values


def _checkpoint_config(path: str) -> Config:
    _, meta = checkpoint.load(path)
    cfg = from_dict(meta["config"])
    return cfg


def _say(line: str) -> None:
    """Print on rank 0 only (under torchrun every rank runs the same command)."""
    if distributed.current().is_main:
        print(line)


def _print_record(title: str, values: dict[str, Any]) -> None:
    _say(summary.record_line(title, values))


def main(argv: list[str] | None = None) -> int:
    """Run a command. User errors end as one line on stderr and exit code 2 (with their traceback
    under ``--debug`` or ``SIMCLRV2_DEBUG=1``); Ctrl-C ends with exit code 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SIMCLRV2_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun the other ranks only report problems
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        code = inference_commands.run(args)
        if code is not None:
            return code
        if args.command == "pretrain":
            from simclrv2.train import pretrain

            result = pretrain.run(resolve_config(args, "pretrain"), args.out, resume=args.resume,
                                  overwrite=args.overwrite)
            _say(f"checkpoint: {result['checkpoint']}")
        elif args.command == "finetune":
            from simclrv2.train import classifier

            cfg = resolve_config(args, "finetune", _checkpoint_config(args.pretrained))
            result = classifier.run_finetune(cfg, args.out, args.pretrained, resume=args.resume,
                                             overwrite=args.overwrite)
            _print_record("final", result["final"])
            _say(f"checkpoint: {result['checkpoint']}")
        elif args.command == "distill":
            from simclrv2.train import distill

            cfg = resolve_config(args, "distill", _checkpoint_config(args.teacher))
            result = distill.run(cfg, args.out, args.teacher, resume=args.resume, overwrite=args.overwrite)
            _print_record("final", result["final"])
            _say(f"checkpoint: {result['checkpoint']}")
        elif args.command == "supervised":
            from simclrv2.train import classifier

            result = classifier.run_supervised(resolve_config(args, "supervised"), args.out, resume=args.resume,
                                               overwrite=args.overwrite)
            _print_record("final", result["final"])
            _say(f"checkpoint: {result['checkpoint']}")
        elif args.command == "evaluate":
            evaluate_command.run(args, resolve_config(args, "evaluate", _checkpoint_config(args.checkpoint)))
        elif args.command == "import-tf":
            from simclrv2.official import tf_import

            result = tf_import.import_tf(args.src, args.arch, args.ema, args.head_input)
            stems = tf_import.write(result, args.out)
            print(f"{result.arch.name} from {result.prefix}: {result.used} tensors imported, {result.skipped} skipped")
            for stem in stems:
                print(f"checkpoint: {stem}")
        elif args.command == "pipeline":
            from simclrv2 import pipeline

            results = pipeline.run(resolve_config(args, "pipeline"), args.out, overwrite=args.overwrite)
            if distributed.current().is_main:
                print(pipeline.results_table(results["rows"], results.get("chance_bar_top1")))
                if pipeline.chance_warning(results):
                    logging.getLogger("simclrv2").warning("%s", pipeline.chance_warning(results))
                print(f"results: {Path(args.out) / 'results.json'}, report: {Path(args.out) / 'report.md'}")
    except ERRORS as e:
        if debug:
            raise
        print(f"simclrv2 {args.command}: error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"simclrv2 {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
