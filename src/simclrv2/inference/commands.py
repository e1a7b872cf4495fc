"""The ``embed``, ``predict`` and ``export`` subcommands of the ``simclrv2`` command line.

``cli.build_parser`` calls :func:`add_parsers`; ``cli.main`` calls :func:`run` first, which returns
``None`` for commands that are not these. Errors are raised as ``DataError``, ``CheckpointError`` or
:class:`~simclrv2.inference.InferenceError`, which the CLI prints as one line.
"""

from __future__ import annotations

import argparse
import sys

from simclrv2.data.datasets import DATASETS
from simclrv2.inference import InferenceError

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = ("embed", "predict", "export")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the inference subcommands to the CLI's subparsers."""
    p = subparsers.add_parser("embed", help="features (and labels) of a dataset under a checkpoint, to safetensors")
    p.add_argument("--checkpoint", required=True, help="pretrain or classifier checkpoint, e.g. RUN_DIR/last")
    p.add_argument("--data", help="dataset path (default: the checkpoint's data)")
    p.add_argument("--dataset", choices=DATASETS, help="dataset kind (default: the checkpoint's; folder with --data)")
    p.add_argument("--layer", type=int,
                   help="pretrain checkpoints: projection-head output k (0 = encoder, default: encoder features)")
    p.add_argument("--splits", help="comma-separated splits among train,val,unlabeled (default: train,val; "
                                    "the unlabeled images for a folder without classes)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", required=True, help="output file, e.g. features.safetensors")

    p = subparsers.add_parser("predict", help="top-k classes of image files with a classifier checkpoint")
    p.add_argument("--checkpoint", required=True, help="classifier checkpoint (finetune, distill or supervised)")
    p.add_argument("images", nargs="+", metavar="IMAGES_OR_FOLDER", help="image files and/or folders")
    p.add_argument("--top", type=int, default=5, help="classes shown per image (default: 5)")
    p.add_argument("--csv", help="also write path,rank,class,probability rows to this CSV file")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    p = subparsers.add_parser("export", help="export a classifier checkpoint to ONNX or TorchScript")
    p.add_argument("--checkpoint", required=True, help="classifier checkpoint (finetune, distill or supervised)")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    p.add_argument("--out", required=True, help="output file; FILE.json describes the preprocessing")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: 17)")


def run(args: argparse.Namespace) -> int | None:
    """Run an inference subcommand; ``None`` when ``args.command`` is not one of them."""
    if args.command not in COMMANDS:
        return None
    if getattr(args, "batch_size", 1) < 1:
        raise InferenceError(f"--batch-size must be >= 1, got {args.batch_size}")
    from pathlib import Path

    from simclrv2.checkpoint import check_output

    for out in (getattr(args, "out", None), getattr(args, "csv", None)):
        if out:
            check_output(Path(out))  # before any work: a directory or a file in the way
    return {"embed": _embed, "predict": _predict, "export": _export}[args.command](args)


def _device(name: str):
    from simclrv2.core.runtime import resolve_device

    try:
        return resolve_device(name)
    except (RuntimeError, ValueError) as e:  # torch rejects malformed names with RuntimeError
        raise InferenceError(str(e)) from None


def _embed(args: argparse.Namespace) -> int:
    from simclrv2 import config
    from simclrv2.inference import embed

    net, meta = embed.load_network(args.checkpoint)
    data = embed.data_config(meta, args.data, args.dataset)
    workers = config.from_dict(meta.get("config", {})).workers
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    tensors, metadata = embed.embed_splits(net, meta, data, args.layer, _device(args.device), args.batch_size,
                                           splits, workers, source=args.checkpoint)
    out = embed.save_features(args.out, tensors, metadata)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
    print(f"features: {out} ({shapes})")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from simclrv2.data.datasets import DataError
    from simclrv2.inference import predict
    from simclrv2.train.classifier import load_classifier

    net, meta = load_classifier(args.checkpoint)
    files = predict.collect_images(args.images)
    data = meta.get("config", {}).get("data", {})
    predictions, unreadable = predict.predict_files(net, meta["classes"], int(meta["image_size"]), files, args.top,
                                                    _device(args.device), args.batch_size,
                                                    crop=data.get("crop", "full"))
    for reason in unreadable:
        print(f"simclrv2 predict: warning: cannot read image {reason}; skipped", file=sys.stderr)
    if not predictions:
        raise DataError(f"none of the {len(files)} image(s) could be read")
    print(predict.format_table(predictions))
    if args.csv:
        print(f"csv: {predict.write_csv(args.csv, predictions)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from simclrv2.inference.export import export_checkpoint

    out, info = export_checkpoint(args.checkpoint, args.format, args.out, args.opset)
    print(f"exported: {out} ({args.format}); preprocessing: {info}")
    return 0
