"""Use simclrv2 from Python: load a checkpoint, get features and class probabilities of your own
images, and build the pieces of a training loop of your own.

    python examples/use_from_python.py [CHECKPOINT [IMAGES_OR_FOLDERS ...]]

CHECKPOINT is a run directory, RUN/best, RUN/last, or OUT/pretrain or OUT/classifier of
``simclrv2 import-tf``. Without one, a tiny network is pretrained for one epoch on scikit-learn's
bundled digits (seconds on a CPU, in a temporary directory); without images, a few digits are
written there as image files of different sizes.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import simclrv2


def tiny_pretraining(out: Path) -> Path:
    """One epoch of pretraining on the bundled digits, with the command line."""
    subprocess.run([sys.executable, "-m", "simclrv2", "pretrain", "--out", str(out), "epochs=1", "image_size=8",
                    "width=0.125", "head_layers=2", "knn_every=0", "device=cpu"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def some_digits(folder: Path, n: int = 6) -> Path:
    """``n`` of scikit-learn's 8 x 8 digits as PNG files, enlarged to different sizes."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    for i in range(n):
        pixels = (digits.images[i] * 255 / 16).astype("uint8")
        Image.fromarray(pixels).resize((8 + 6 * i, 8 + 4 * i)).save(folder / f"digit{i}_{digits.target[i]}.png")
    return folder


def use_a_checkpoint(checkpoint: str | Path, images: list[str | Path]) -> None:
    model = simclrv2.load(checkpoint)  # on the GPU when there is one, as the command line
    print(model)
    files = simclrv2.list_images(*images)  # the rows' order
    feats = model.features(images, batch_size=64)  # encoder features (classifier: its linear layer's input)
    print(f"features: {tuple(feats.shape)} for {len(files)} images")
    if model.kind == "pretrain":
        projection = model.features(images, layer=model.head_layers)
        similarity = torch.nn.functional.normalize(projection, dim=1) @ torch.nn.functional.normalize(projection,
                                                                                                       dim=1).T
        nearest = similarity.fill_diagonal_(-2).argmax(dim=1)
        for f, j in zip(files, nearest.tolist()):
            print(f"  {f.name}: most similar {files[j].name}")
    else:
        probs = model.predict_proba(images)  # [N, len(model.classes)]
        print(f"probabilities: {tuple(probs.shape)}")
        for p in model.predict(images, top=3):
            shown = ", ".join(f"{c} {v:.3f}" for c, v in zip(p.classes, p.probabilities))
            print(f"  {Path(p.path).name}: {shown}")


def own_training_loop(steps: int = 5) -> None:
    """SimCLR pretraining steps with the building blocks, then a classifier to fine-tune."""
    torch.manual_seed(0)
    net = simclrv2.build_simclr("resnet18", width=0.125, cifar_stem=True, head_layers=2, proj_dim=16)
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)  # your uint8 batch [B, 3, H, W]
    views = simclrv2.ViewMaker("simclr", size=12, seed=0)  # random crop, flip, colour jitter, grey
    optimizer = simclrv2.LARS(simclrv2.param_groups(net, weight_decay=1e-6), lr=0.0)
    peak = simclrv2.scaled_lr(0.3, len(images), "linear")
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = simclrv2.lr_at(step, peak, warmup_steps=1, total_steps=steps)
        loss = simclrv2.nt_xent(net(views(images)), net(views(images)), temperature=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"own training loop: loss {loss.item():.3f} (step {step + 1}/{steps})")
    classifier = simclrv2.build_classifier(net, num_classes=10)  # shares the encoder; train it on labels
    print(f"classifier for fine-tuning: {sum(p.numel() for p in classifier.parameters()):,} parameters")


def main(argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = argv[0] if argv else tiny_pretraining(Path(tmp) / "pretrain")
        images = argv[1:] or [some_digits(Path(tmp) / "digits")]
        use_a_checkpoint(checkpoint, images)
    own_training_loop()


if __name__ == "__main__":
    main(sys.argv[1:])
