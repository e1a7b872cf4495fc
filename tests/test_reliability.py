"""Reliability, third round (issue #22): each test here failed before its fix.

Decoding on threads in a fresh process, tiny photo folders through every stage, an export as one
unit, 16-bit PNG rounding, a full disk during a save, NaN features in ``evaluate``, unbounded config
values, and a tampered training state refused before anything is written.
"""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simclrv2.cli import main

TINY = ["image_size=8", "width=0.125", "head_layers=2", "device=cpu", "epochs=1"]


def one_error_line(capsys, code, command):
    """The run ended with exit code 2 and one line ``simclrv2 COMMAND: error: ...``; that line."""
    err = capsys.readouterr().err
    lines = [line.strip() for line in re.split(r"[\r\n]", err)
             if line.strip() and not line.startswith(("INFO:", "WARNING:")) and "%|" not in line]  # progress bars
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"simclrv2 {command}: error: "), err
    return lines[0]


# -- 1. decoding on threads in a fresh process ------------------------------------------------------

RACE = textwrap.dedent("""
    import sys, threading
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path
    from simclrv2.data.files import decode_file, eval_crop

    files = sorted(Path(sys.argv[1]).iterdir()) * 3
    barrier = threading.Barrier(len(files))  # every thread reaches the decoder at the same moment

    def work(path):
        barrier.wait()
        return eval_crop(decode_file(path, 20), 8)

    with ThreadPoolExecutor(len(files)) as pool:
        print(sum(int(x.sum()) for x in pool.map(work, files)))
""")


def photos(root: Path) -> Path:
    """The photos of the report: CMYK JPEG, EXIF-rotated JPEG, transparent PNG, 1x1 PNG, and plain ones."""
    root.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    rgb.convert("CMYK").save(root / "cmyk.jpg")
    exif = rgb.getexif()
    exif[0x0112] = 6
    rgb.save(root / "rotated.jpg", exif=exif)
    rgb.convert("RGBA").save(root / "transparent.png")
    Image.new("RGB", (1, 1), (9, 99, 199)).save(root / "one.png")
    rgb.save(root / "plain.png")
    rgb.save(root / "plain.jpg")
    return root


def test_decoding_on_threads_in_a_fresh_process(tmp_path):
    """Was an ImportError (a half-initialised torchvision module) in 5 of 5 fresh processes."""
    folder = photos(tmp_path / "photos")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1",
           "PATH": "/usr/bin:/bin"}
    sums = set()
    for _ in range(2):  # with the barrier, the race hit every fresh process before the fix
        done = subprocess.run([sys.executable, "-c", RACE, str(folder)], capture_output=True, text=True, env=env,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        sums.add(done.stdout.strip())
    assert len(sums) == 1  # and the same pixels each time


# -- 4. 16-bit PNGs decode like their 8-bit twins ---------------------------------------------------

def write_png16(path: Path, samples: np.ndarray) -> Path:
    """A 16-bit PNG (greyscale ``[H, W]`` or RGB ``[H, W, 3]``) written by hand: PIL cannot write 16-bit RGB."""
    import struct
    import zlib

    h, w = samples.shape[:2]
    raw = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if samples.ndim == 3 else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("form", ["v << 8", "v * 257"])
@pytest.mark.parametrize("colour", [True, False], ids=["rgb", "grey"])
def test_16_bit_png_decodes_as_its_8_bit_twin(tmp_path, form, colour):
    """``v << 8`` decoded one lower for every v > 128 (127 of 256 samples) before the fix."""
    from simclrv2.data.files import decode_file

    v = np.random.default_rng(1).permutation(256).astype(np.uint16).reshape(16, 16)
    v = np.stack([v, v[::-1], v.T], -1) if colour else v
    wide = v << 8 if form == "v << 8" else v * 257
    decoded = decode_file(write_png16(tmp_path / "wide.png", wide))
    Image.fromarray(v.astype(np.uint8)).save(tmp_path / "twin.png")
    twin = np.asarray(Image.open(tmp_path / "twin.png").convert("RGB"))  # PIL's reading of the 8-bit twin
    assert np.array_equal(decoded.permute(1, 2, 0).numpy(), twin)


@pytest.mark.parametrize("colour", [True, False], ids=["rgb", "grey"])
def test_16_bit_png_of_other_values_rounds_to_nearest(tmp_path, colour):
    from simclrv2.data.files import decode_file

    wide = np.arange(0, 65536, 97, dtype=np.uint16)[:600].reshape(20, 30)
    wide = np.stack([wide, wide[::-1], wide[:, ::-1]], -1) if colour else wide
    decoded = decode_file(write_png16(tmp_path / "wide.png", wide)).permute(1, 2, 0).numpy()
    expected = np.round(wide / 257).astype(np.uint8)
    assert np.array_equal(decoded, expected if colour else np.stack([expected] * 3, -1))


# -- 5. a full disk during a save --------------------------------------------------------------------

@pytest.mark.parametrize("failure", ["torch", "oserror"])
def test_a_full_disk_while_saving_the_training_state_is_one_line(tmp_path, capsys, monkeypatch, failure):
    """torch.save(path) reports ENOSPC as a RuntimeError ('unexpected pos'): was a traceback. The
    previous checkpoint stays as it was, and the unfinished save is removed."""
    import errno
    import hashlib
    import os

    from simclrv2 import checkpoint

    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *TINY, "knn_every=0"]) == 0
    before = hashlib.sha256((out / "last" / checkpoint.WEIGHTS).read_bytes()).hexdigest()
    entries = sorted(p.name for p in out.iterdir())
    real = torch.save

    def full(obj, f, *args, **kwargs):
        if failure == "torch":  # what torch.save(path) raises on a full disk (measured with /dev/full)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a write to an open file raises

    monkeypatch.setattr(torch, "save", full)
    capsys.readouterr()
    code = main(["pretrain", "--out", str(out), *TINY, "knn_every=0", "epochs=2"])
    line = one_error_line(capsys, code, "pretrain")
    assert "state.pt" in line and "free some space" in line, line
    monkeypatch.setattr(torch, "save", real)
    assert hashlib.sha256((out / "last" / checkpoint.WEIGHTS).read_bytes()).hexdigest() == before
    assert sorted(p.name for p in out.iterdir()) == entries  # no unfinished save left behind


# -- 8. a tampered training state is refused before anything is written -----------------------------

def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (the lock record included) by name, and every link's target."""
    import os

    return {str(p.relative_to(root)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()}


@pytest.mark.parametrize("stage", ["pretrain", "supervised"])
@pytest.mark.parametrize("tamper", ["no stepper", "history not a list", "best not a number"])
def test_a_tampered_training_state_is_refused_before_anything_is_written(tmp_path, capsys, stage, tamper):
    """Was refused only after run.json, config.yaml and .lock had been rewritten (a resume with more
    epochs records the new config)."""
    from simclrv2 import checkpoint
    from simclrv2.train import rundir

    out = tmp_path / "run"
    assert main([stage, "--out", str(out), *TINY, "knn_every=0"]) == 0
    rundir.release(out)
    state_file = out / "last" / checkpoint.STATE
    state = torch.load(state_file, weights_only=True)  # keeps its save id: only its structure is wrong
    if tamper == "no stepper":
        del state["stepper"]
    elif tamper == "history not a list":
        state["history"] = 5
    else:
        state["best"] = "high"
    torch.save(state, state_file)
    before = tree_bytes(out)
    capsys.readouterr()
    line = one_error_line(capsys, main([stage, "--out", str(out), *TINY, "knn_every=0", "epochs=2"]), stage)
    assert "training state" in line, line
    assert tree_bytes(out) == before
    rundir.release(out)


# -- 3. an export is one unit -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("sup") / "run"
    assert main(["supervised", "--out", str(out), *TINY, "knn_every=0"]) == 0
    from simclrv2.train import rundir

    rundir.release(out)
    return out / "best"


@pytest.mark.parametrize("fmt,name", [("torchscript", "m.pt"), ("onnx", "m.onnx")])
def test_an_export_is_one_unit(classifier, tmp_path, capsys, monkeypatch, fmt, name):
    """Before: a failure (here a full disk) between the model's rename and the sidecar's left a new
    model beside the previous model's sidecar, which nothing could tell; killed exports' temporary
    files stayed forever."""
    import errno
    import json
    import os

    from simclrv2 import checkpoint
    from simclrv2.inference import InferenceError
    from simclrv2.inference.export import check_export

    out = tmp_path / name
    export = ["export", "--checkpoint", str(classifier), "--format", fmt, "--out", str(out)]
    assert main(export) == 0
    first = check_export(out)
    # what exports killed during their writes leave (and a file of another name, which stays)
    leftovers = [tmp_path / f".{name}.0123abcd.tmp", tmp_path / f".{name}.json.89abcdef.tmp"]
    for p in [*leftovers, tmp_path / ".other.pt.0123abcd.tmp"]:
        p.write_bytes(b"partial")

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "write_json", full)  # the sidecar cannot be written
    capsys.readouterr()
    one_error_line(capsys, main(export), "export")
    monkeypatch.undo()
    assert json.loads(out.with_name(name + ".json").read_text()) == first  # the previous sidecar...
    with pytest.raises(InferenceError, match="describes another export"):  # ...no longer passes for this model
        check_export(out)
    assert not any(p.exists() for p in leftovers) and (tmp_path / ".other.pt.0123abcd.tmp").exists()
    out.with_name(name + ".json").unlink()
    with pytest.raises(InferenceError, match="has no sidecar"):
        check_export(out)
    assert main(export) == 0  # the next export publishes a matching pair
    assert check_export(out)["export_id"] != first["export_id"]


def test_an_export_killed_between_its_two_files_is_detected(classifier, tmp_path):
    """SIGKILL after the model's rename, before the sidecar's (a fresh process)."""
    import os
    import signal

    from simclrv2.inference import InferenceError
    from simclrv2.inference.export import check_export

    out = tmp_path / "m.pt"
    export = ["export", "--checkpoint", str(classifier), "--format", "torchscript", "--out", str(out)]
    assert main(export) == 0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
           "SIMCLRV2_KILL_AT": "export:model:1"}
    done = subprocess.run([sys.executable, "-m", "simclrv2", *export], env=env, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    with pytest.raises(InferenceError, match="describes another export"):
        check_export(out)


# -- 6. NaN features in evaluate --------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "run"
    assert main(["pretrain", "--out", str(out), *TINY, "knn_every=0"]) == 0
    from simclrv2.train import rundir

    rundir.release(out)
    return out / "last"


@pytest.mark.parametrize("damage", ["negative running_var", "huge weights"])
def test_evaluate_of_a_checkpoint_with_nan_features_is_one_line(pretrained, tmp_path, capsys, damage):
    """Finite weights whose features are NaN (kept after a divergence): was scikit-learn's ValueError
    ('Input X contains NaN') as a traceback."""
    from simclrv2 import checkpoint
    from simclrv2.models.networks import build_network

    tensors, meta = checkpoint.load(pretrained)
    net = build_network(meta["arch"])
    checkpoint.load_weights(net, tensors)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if damage == "negative running_var" and name.endswith("running_var"):
                t.fill_(-1.0)
            elif damage == "huge weights" and name.endswith("weight") and t.dim() == 4:
                t.mul_(1e30)
    meta = {k: v for k, v in meta.items() if k not in ("format", "save_id", "parts")}
    stem = checkpoint.save(tmp_path / "bad" / "last", net, meta)
    capsys.readouterr()
    line = one_error_line(capsys, main(["evaluate", "--checkpoint", str(stem), "--device", "cpu"]), "evaluate")
    assert "NaN" in line and str(stem) in line, line


def test_evaluate_of_a_classifier_with_nan_outputs_is_one_line(classifier, tmp_path, capsys):
    """Its accuracy was computed from NaN logits (the argmax of NaN), silently."""
    from simclrv2 import checkpoint
    from simclrv2.models.networks import build_network

    tensors, meta = checkpoint.load(classifier)
    net = build_network(meta["arch"])
    checkpoint.load_weights(net, tensors)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.fill_(-1.0)
    meta = {k: v for k, v in meta.items() if k not in ("format", "save_id", "parts")}
    stem = checkpoint.save(tmp_path / "bad" / "best", net, meta)
    capsys.readouterr()
    line = one_error_line(capsys, main(["evaluate", "--checkpoint", str(stem), "--device", "cpu"]), "evaluate")
    assert "NaN" in line and str(stem) in line, line


# -- 7. config values with no upper bound ------------------------------------------------------------

@pytest.mark.parametrize("override,message", [
    ("image_size=1000000000", "data.image_size=1000000000 is too large"),
    ("threads=100000000000", "threads=100000000000 is more than"),
    ("workers=100000000000", "workers=100000000000 is more than"),
    ("width=1e9", "model.width=1e+09 is too large"),
    ("proj_dim=1000000000", "model.proj_dim=1000000000 is too large"),
    ("head_layers=100000", "model.head_layers=100000 is too large"),
    ("max_pixels=100000000000000", "data.max_pixels=100000000000000 is more than"),
    ("memory_gb=1e12", "data.memory_gb=1e+12 is more than"),
    ("epochs=100000000000", "pretrain.epochs=100000000000 is too large"),
    ("batch_size=100000000000", "pretrain.batch_size=100000000000 is too large"),
    ("memory_size=100000000000", "pretrain.memory_size=100000000000 is too large"),
    # found by tests/test_fuzz.py: 'value cannot be converted to type float without overflow' in the optimizer
    ("weight_decay=3.4028234663852882e+38", "pretrain.weight_decay must be <= 1"),
    ("lr=1e300", "pretrain.lr=1e+300 is too large"),
])
def test_config_values_beyond_what_the_machine_allows_are_one_line(tmp_path, capsys, override, message):
    """image_size=1000000000 was a storage-overflow traceback, threads=100000000000 an overflow traceback."""
    out = tmp_path / "run"
    argv = ["pretrain", "--out", str(out), *[a for a in TINY if a.split("=")[0] != override.split("=")[0]], override]
    line = one_error_line(capsys, main(argv), "pretrain")
    assert message in line, line
    assert not out.exists()


# -- 2. small photo folders through every stage -----------------------------------------------------

def oversized_png(path: Path, side: int = 100_000) -> None:
    """A PNG whose header claims ``side`` x ``side`` pixels (a decompression bomb's header), no pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def small_folder(root: Path, per_class: int, classes=("a", "b"), bad: bool = False) -> Path:
    from conftest import write_image_folder

    write_image_folder(root, classes=classes, per_class=per_class, size=12)
    if bad:  # an unreadable file and a decompression bomb's header in each class, skipped (data.strict=false)
        for c in classes:
            (root / c / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
            oversized_png(root / c / "zz_bomb.png")
    return root


def stage_ok_or_one_line(capsys, argv) -> int:
    """Run one command; it succeeds, or refuses in one line without a traceback. Its exit code."""
    capsys.readouterr()
    code = main(argv)
    if code != 0:
        one_error_line(capsys, code, argv[0])
    return code


@pytest.mark.parametrize("per_class,bad", [(1, False), (2, False), (3, False), (4, True), (5, False), (10, False)])
def test_every_stage_on_a_small_folder_works_or_refuses_in_one_line(tmp_path, capsys, per_class, bad):
    """4 photos per class (bad files or not) died after the first epoch in the kNN monitor
    (torch.cat(): expected a non-empty list): the validation split rounds to no image per class."""
    from simclrv2.train import rundir

    data = small_folder(tmp_path / "data", per_class, bad=bad)
    tiny = ["--data", str(data), *TINY]
    runs = {name: tmp_path / name for name in ("pre", "fine", "dist", "sup", "pipe")}
    assert stage_ok_or_one_line(capsys, ["pretrain", "--out", str(runs["pre"]), *tiny, "knn_every=1"]) == 0
    assert stage_ok_or_one_line(capsys, ["finetune", "--pretrained", str(runs["pre"] / "last"),
                                         "--out", str(runs["fine"]), *tiny]) == 0
    assert stage_ok_or_one_line(capsys, ["distill", "--teacher", str(runs["fine"] / "best"),
                                         "--out", str(runs["dist"]), *tiny]) == 0
    assert stage_ok_or_one_line(capsys, ["supervised", "--out", str(runs["sup"]), *tiny]) == 0
    for ckpt in (runs["pre"] / "last", runs["sup"] / "best"):
        code = stage_ok_or_one_line(capsys, ["evaluate", "--checkpoint", str(ckpt), "--data", str(data),
                                             "--device", "cpu"])
        assert code == (0 if per_class >= 10 else 2)  # no validation split below 5 per class
        assert stage_ok_or_one_line(capsys, ["evaluate", "--checkpoint", str(ckpt), "--data", str(data),
                                             "--device", "cpu", "--split", "train"]) == 0
    stage_ok_or_one_line(capsys, ["pipeline", "--out", str(runs["pipe"]), "--data", str(data), "--labels", "0.5",
                                  *TINY[:4], *[f"{s}.epochs=1" for s in ("pretrain", "finetune", "distill",
                                                                           "supervised")]])
    for out in runs.values():
        rundir.release(out)


def test_one_class(tmp_path, capsys):
    data = small_folder(tmp_path / "data", 5, classes=("only",))
    tiny = ["--data", str(data), *TINY]
    assert stage_ok_or_one_line(capsys, ["pretrain", "--out", str(tmp_path / "pre"), *tiny, "knn_every=1"]) == 0
    for argv in (["supervised", "--out", str(tmp_path / "sup"), *tiny],
                 ["finetune", "--pretrained", str(tmp_path / "pre" / "last"), "--out", str(tmp_path / "fine"), *tiny],
                 ["evaluate", "--checkpoint", str(tmp_path / "pre" / "last"), "--device", "cpu"]):
        stage_ok_or_one_line(capsys, argv)


# -- found by tests/test_fuzz.py -----------------------------------------------------------------------

def test_a_png_with_too_little_image_data_is_unreadable_not_a_crash(tmp_path):
    """Found by the fuzzer: a PNG whose chunks are whole but whose IDAT holds fewer rows than its header
    says crashed the process in torchvision's decoder (libpng 'Not enough image data', then SIGSEGV).
    Run in a fresh process, so that a crash is a failure and not the end of the test session."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = tmp_path / "short.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 300, 300, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    code = ("import sys\nfrom simclrv2.data.files import UnreadableImage, decode_file\n"
            "try:\n    decode_file(sys.argv[1])\nexcept UnreadableImage as e:\n    print('unreadable:', e)\n")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1",
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0 and "unreadable: " in done.stdout and "truncated" in done.stdout, \
        (done.returncode, done.stderr[-500:])
