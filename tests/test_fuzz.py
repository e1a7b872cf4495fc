"""Property-based tests of the command line, run in-process: random config overrides, random image
files and random folder shapes.

The property everywhere: the command ends with exit code 0, or with exit code 2 and one line
``simclrv2 COMMAND: error: ...`` and no traceback; nothing outside ``--out`` is written; and an
existing run directory is byte-identical after a refusal. The examples are few, bounded and
derandomized (the same ones on every run, so CI is deterministic and fast); what the fuzzer found is
kept below as ``@example``s.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from simclrv2.cli import main
from simclrv2.config import Config
from simclrv2.train import rundir

TINY = ["image_size=8", "width=0.125", "head_layers=2", "device=cpu", "knn_k=3"]
FIXED = ["epochs=1", "threads=1"]  # after the random overrides: every run that starts ends quickly


def fuzz(examples: int):
    """Bounded and derandomized; ``SIMCLRV2_FUZZ=N`` runs N times the examples with fresh randomness
    (a longer search, by hand: keep what it finds as an ``@example``)."""
    scale = int(os.environ.get("SIMCLRV2_FUZZ", "0") or 0)
    return settings(max_examples=examples * max(scale, 1), deadline=None, derandomize=not scale, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# ------------------------------------------------------------------------------------------ the property

def snapshot(root: Path, skip: Path | None = None) -> dict[str, bytes]:
    """Every file, link and folder under ``root`` (``skip`` left out): names, contents, link targets."""
    out: dict[str, bytes] = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        key = str(p.relative_to(root))
        if p.is_symlink():
            out[key] = b"-> " + os.readlink(p).encode("utf-8", "surrogateescape")
        elif p.is_file():
            out[key] = p.read_bytes()
        else:
            out[key] = b"<dir>"
    return out


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` in this process: exit code and stderr (argparse's exits included)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    return code, capsys.readouterr().err


def assert_ok_or_one_line(code: int, err: str, command: str) -> None:
    err = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", err)  # the cursor moves of progress bars
    lines = [line.strip() for line in re.split(r"[\r\n]", err)
             if line.strip() and not line.startswith(("INFO:", "WARNING:")) and "%|" not in line]
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith(f"simclrv2 {command}: error: "), err


def checked_run(capsys, sandbox: Path, argv: list[str], out: Path | None, existing: Path | None = None) -> int:
    """Run ``argv``; the property holds: exit 0, or 2 with one line; nothing outside ``out`` changed;
    ``existing`` (a run directory) unchanged after a refusal."""
    before = snapshot(sandbox, skip=out)
    kept = snapshot(existing) if existing is not None else None
    code, err = run_cli(capsys, argv)
    if os.environ.get("FUZZ_LOG"):  # what the examples did, for a person tuning the strategies
        with open(os.environ["FUZZ_LOG"], "a") as log:
            log.write(f"{code} {argv[0]} {argv[-8:]!r} {err.strip().splitlines()[-1][:150] if err.strip() else ''}\n")
    try:
        assert_ok_or_one_line(code, err, argv[0])
        assert snapshot(sandbox, skip=out) == before, "something outside --out was written"
        if code == 2 and kept is not None:
            assert snapshot(existing) == kept, "a refusal changed the existing run"
    finally:
        if out is not None:
            rundir.release(out)
    return code


def write_folder(root: Path, per_class=(3, 3), size=10, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c, n in enumerate(per_class):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A folder of 2 x 4 photos, a finished pretrain run and a finished supervised run on it."""
    root = tmp_path_factory.mktemp("fuzz")
    write_folder(root / "data", (4, 4))
    for stage in ("pretrain", "supervised"):
        assert main([stage, "--out", str(root / stage), "--data", str(root / "data"), *TINY, *FIXED]) == 0
        rundir.release(root / stage)
    return root


# ------------------------------------------------------------------------------- random config overrides

def _keys() -> list[str]:
    """``section.key`` of every config key (``key`` for the top-level ones)."""
    out = []
    for name, value in Config().to_dict().items():
        out += [f"{name}.{k}" for k in value] if isinstance(value, dict) else [name]
    return out


# not fuzzed: what names other data, and torch.compile (minutes on a CPU)
KEYS = [k for k in _keys() if k not in ("data.path", "data.dataset", "data.download", "labels_file", "compile")]
numbers = st.one_of(
    st.integers(-3, 40),  # small: valid and invalid neighbours of the usual values
    st.sampled_from([0, 1, 2, 2**31, 2**63, 10**12, -(10**12), 10**100]),
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not (1e3 < abs(x) < 1e6)),
)
values = st.one_of(
    numbers.map(str),
    st.sampled_from(["", "none", "null", "true", "1e400", "-inf", "nan", "0x10", "1_000", "[1, 2]", "{a: 1}",
                     "ünïcode", "a,b", "0.5:3", "'1'", "1e-400"]),
    st.text(max_size=8).filter(lambda v: "\x00" not in v),
)
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: k.split(".")[-1]),
                 st.text(min_size=1, max_size=6).filter(lambda k: "=" not in k and "\x00" not in k))


@fuzz(150)
@given(overrides=st.lists(st.tuples(keys, values), min_size=1, max_size=3),
       stage=st.sampled_from(["pretrain", "supervised"]), into_existing=st.booleans())
@example(overrides=[("image_size", "1000000000")], stage="pretrain", into_existing=False)
@example(overrides=[("threads", "100000000000")], stage="pretrain", into_existing=False)
@example(overrides=[("width", "1e9")], stage="supervised", into_existing=True)
@example(overrides=[("data.max_pixels", "100000000000000")], stage="pretrain", into_existing=True)
@example(overrides=[("supervised.weight_decay", "3.4028234663852882e+38")], stage="supervised",
         into_existing=False)  # found: an overflow RuntimeError in the optimizer
def test_random_config_overrides(sandbox, capsys, overrides, stage, into_existing):
    out = sandbox / stage if into_existing else sandbox / "new"
    argv = [stage, "--out", str(out), "--data", str(sandbox / "data"), *TINY,
            *[f"{k}={v}" for k, v in overrides if not k.startswith("-")], *FIXED]
    code = checked_run(capsys, sandbox, argv, out, sandbox / stage if into_existing else None)
    if not into_existing and out.exists():
        import shutil

        shutil.rmtree(out)
    assert code in (0, 2)


# ------------------------------------------------------------------------------------ random image files

def png_header(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels and holds a few bytes of them."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F", "La", "RGBa", "HSV", "LAB"]
FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF", "webp": "WEBP", "ppm": "PPM"}


@st.composite
def image_files(draw) -> tuple[str, bytes]:
    """``(extension, bytes)`` of an image file: a valid one of any mode and size, a damaged one, or noise."""
    kind = draw(st.sampled_from(["image", "image", "truncated", "noise", "header", "16-bit"]))
    ext = draw(st.sampled_from(list(FORMATS)))
    if kind == "noise":
        return ext, draw(st.binary(max_size=64))
    if kind == "header":
        side = draw(st.sampled_from([0, 1, 2**16, 100_000, 2**31 - 1]))
        return "png", png_header(side, draw(st.sampled_from([1, side, 3])))
    if kind == "16-bit":
        w, h = draw(st.integers(1, 9)), draw(st.integers(1, 9))
        v = np.asarray(draw(st.lists(st.integers(0, 65535), min_size=w * h * 3, max_size=w * h * 3)), np.uint16)
        raw = b"".join(b"\x00" + v.reshape(h, w * 3)[y].astype(">u2").tobytes() for y in range(h))
        return "png", png_header(w, h, 16, 2)[:33] + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    mode = draw(st.sampled_from(MODES))
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    rgb = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))
    try:
        im = rgb.convert(mode)
    except ValueError:
        im = rgb
    buf = io.BytesIO()
    kwargs = {}
    if draw(st.booleans()):  # an EXIF orientation
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(0, 9))
        kwargs["exif"] = exif.tobytes()
    if mode == "P" and draw(st.booleans()):
        kwargs["transparency"] = 0
    try:
        im.save(buf, FORMATS[ext], **kwargs)
    except (OSError, ValueError, KeyError, TypeError):
        buf = io.BytesIO()
        rgb.save(buf, "PNG")
        ext = "png"
    data = buf.getvalue()
    if kind == "truncated":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    return ext, data


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@fuzz(120)
@given(file=image_files())
@example(file=("png", png_header(100_000, 100_000)))
@example(file=("png", png_header(100_000, 3)))  # found: whole chunks, too little data: SIGSEGV in torchvision
@example(file=("jpg", b"\xff\xd8\xff\xe0 not a jpeg"))
def test_random_image_files_in_predict(sandbox, capsys, tmp_path_factory, file):
    ext, data = file
    folder = sandbox / "inputs"
    folder.mkdir(exist_ok=True)
    path = folder / f"random.{ext}"
    path.write_bytes(data)
    if os.environ.get("FUZZ_KEEP"):
        Path(os.environ["FUZZ_KEEP"]).write_bytes(data)
    try:
        argv = ["predict", "--checkpoint", str(sandbox / "supervised" / "best"), "--device", "cpu",
                str(path), str(sandbox / "data" / "class0" / "0.png")]
        checked_run(capsys, sandbox, argv, None)
    finally:
        path.unlink()


@fuzz(15)
@given(file=image_files(), strict=st.booleans())
@example(file=("png", png_header(100_000, 100_000)), strict=False)
def test_random_image_files_in_training(tmp_path_factory, capsys, file, strict):
    ext, data = file
    root = tmp_path_factory.mktemp("images")
    write_folder(root / "data", (4, 4))
    (root / "data" / "class1" / f"random.{ext}").write_bytes(data)
    out = root / "run"
    argv = ["supervised", "--out", str(out), "--data", str(root / "data"), *(["--strict"] if strict else []),
            *TINY, *FIXED]
    checked_run(capsys, root, argv, out)


# ---------------------------------------------------------------------------------- random folder shapes

@st.composite
def folder_shapes(draw) -> dict:
    classes = draw(st.lists(st.integers(0, 6), min_size=0, max_size=3))  # images per class (0: empty class)
    return {"classes": classes, "loose": draw(st.integers(0, 3)),  # images beside the class folders
            "nested": draw(st.booleans()), "link": draw(st.sampled_from(["none", "file", "dir", "dangling", "loop"])),
            "val": draw(st.booleans())}


@fuzz(40)
@given(shape=folder_shapes(), stage=st.sampled_from(["pretrain", "supervised"]))
@example(shape={"classes": [4, 4], "loose": 0, "nested": False, "link": "none", "val": False}, stage="pretrain")
@example(shape={"classes": [1], "loose": 0, "nested": False, "link": "none", "val": False}, stage="supervised")
@example(shape={"classes": [], "loose": 0, "nested": False, "link": "none", "val": False}, stage="pretrain")
def test_random_folder_shapes(tmp_path_factory, capsys, shape, stage):
    root = tmp_path_factory.mktemp("shapes")
    data = root / "data"
    data.mkdir()
    tree = data / "train" if shape["val"] else data
    tree.mkdir(exist_ok=True)
    write_folder(tree, shape["classes"], seed=len(shape["classes"]))
    if shape["val"]:
        write_folder(data / "val", shape["classes"][:1] + [1] * (len(shape["classes"]) - 1), seed=9)
    rng = np.random.default_rng(1)
    for i in range(shape["loose"]):
        Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(tree / f"loose{i}.png")
    if shape["nested"] and shape["classes"]:
        deep = tree / "class0" / "deeper" / "deepest"
        deep.mkdir(parents=True)
        Image.new("RGB", (10, 10), (1, 2, 3)).save(deep / "nested.png")
    if shape["link"] != "none" and shape["classes"]:
        target = {"file": tree / "class0" / "0.png", "dir": tree / "class0", "dangling": root / "missing.png",
                  "loop": tree / "loop"}[shape["link"]]
        (tree / ("loop" if shape["link"] == "loop" else "linked" + (".png" if shape["link"] != "dir" else ""))
         ).symlink_to(target)
    out = root / "run"
    checked_run(capsys, root, [stage, "--out", str(out), "--data", str(data), *TINY, *FIXED], out)
