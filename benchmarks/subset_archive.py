"""A smaller copy of an ImageFolder archive: the first N files (sorted) of each class folder.

The device call carries at most 64 MiB and Imagenette's train archive alone is 67 MB, so the GPU
session takes a subset (peers.py reads 256 + 50 photos per class of it):

    python benchmarks/subset_archive.py ../shared/data/imagenette2-160-train.tar.gz \\
        .data/imagenette-subset.tar.gz --per-class 400
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from collections import defaultdict
from pathlib import PurePosixPath


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a .tar.gz holding .../CLASS/FILE images")
    p.add_argument("target", help="the smaller .tar.gz to write (same folder layout)")
    p.add_argument("--per-class", type=int, default=400)
    args = p.parse_args(argv)
    if args.per_class < 1:
        p.error("--per-class must be at least 1")
    with tarfile.open(args.source) as src:
        members = sorted((m for m in src.getmembers() if m.isfile()), key=lambda m: m.name)
        by_class: dict[str, list[tarfile.TarInfo]] = defaultdict(list)
        for m in members:
            by_class[str(PurePosixPath(m.name).parent)].append(m)
        kept = [m for files in by_class.values() for m in files[:args.per_class]]
        with tarfile.open(args.target, "w:gz") as dst:
            for m in kept:
                dst.addfile(m, src.extractfile(m))
    print(f"{args.target}: {len(kept)} files from {len(by_class)} folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
