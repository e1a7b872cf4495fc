"""Convert an official SimCLRv2 TensorFlow checkpoint into checkpoints of ours.

The official TF1 code names layers by creation order, with no per-block scopes
(``base_model/conv2d_17/kernel``, ``base_model/batch_normalization_12/gamma``), so the mapping is
made by walking our ResNet in the order the official code creates its layers (projection shortcut
first in a block, then the main path) and checking every shape. Every tensor of the file is
either used or deliberately skipped (optimizer slots, the momentum-contrast memory, ``global_step``,
the EMA copy not chosen); anything else is an error naming it.

TF2 SavedModels (and TF2 training checkpoints) key their variables by object-graph paths instead;
:mod:`simclrv2.official.tf2_graph` walks the stored object graph and gives each variable its TF1
name, after which both formats take the same path.

Outputs, both ordinary checkpoints of ours:

* ``OUT/pretrain``: encoder + projection head (``kind='pretrain'``), for ``finetune --pretrained``,
  ``evaluate``, ``embed``;
* ``OUT/classifier``: encoder (+ the head layers the supervised head reads) + the 1000-way layer
  (``kind='classifier'``), when the file has ``head_supervised``: for ``distill --teacher``,
  ``evaluate``, ``predict``, ``export``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from simclrv2 import checkpoint
from simclrv2.config import merge, preset
from simclrv2.errors import UserError
from simclrv2.models.networks import Classifier, SimCLRModel, arch_of
from simclrv2.models.head import ProjectionHead
from simclrv2.models.resnet import RESNET_SPECS, BasicBlock, Bottleneck, ConvBnAct, ResNet, SelectiveKernelConv
from simclrv2.official import tf2_graph
from simclrv2.official.tf_bundle import BundleError, TFBundle
from simclrv2.official.wnids import IMAGENET_WNIDS

__all__ = ["TFImportError", "OfficialArch", "parse_arch", "find_prefix", "creation_order", "import_tf",
           "write", "HEAD_INPUTS"]

SK_RATIO = 0.0625  # the official sk1 models
EMA = "ema_model/"
SUPERVISED = "head_supervised/linear_layer/dense/"
HEAD_INPUTS = ("auto", "encoder", "nl_0", "nl_1")
CLASS_ORDER = "sorted ImageNet wnids (TFDS imagenet2012 label order; assumed, not stored in the file)"


class TFImportError(UserError):
    """The TensorFlow checkpoint cannot be converted (missing, corrupt, another model, mismatch)."""


@dataclass(frozen=True)
class OfficialArch:
    """A SimCLRv2 ResNet as the official names say it: ``r50_1x_sk1`` (``_cifar``: the CIFAR stem)."""

    depth: int
    width: float
    sk: bool
    cifar_stem: bool = False

    @property
    def name(self) -> str:
        width = f"{self.width:g}"
        return f"r{self.depth}_{width}x_sk{int(self.sk)}" + ("_cifar" if self.cifar_stem else "")

    def encoder(self) -> ResNet:
        return ResNet(self.depth, width=self.width, sk_ratio=SK_RATIO if self.sk else 0.0, cifar_stem=self.cifar_stem)


def parse_arch(text: str) -> OfficialArch:
    m = re.fullmatch(r"r(\d+)_([0-9.]+)x_sk([01])(_cifar)?", text.strip())
    if not m or int(m[1]) not in RESNET_SPECS or float(m[2]) <= 0:
        raise TFImportError(f"bad --arch {text!r}; expected e.g. r50_1x_sk1 or r152_3x_sk1 "
                            f"(depth {'/'.join(map(str, RESNET_SPECS))}, width, sk0/sk1, optional _cifar)")
    return OfficialArch(int(m[1]), float(m[2]), m[3] == "1", bool(m[4]))


# ---- locating the bundle --------------------------------------------------------------------------

def find_prefix(src: str | Path) -> Path:
    """The bundle prefix of a TF1 checkpoint dir or prefix, a SavedModel dir or a TF-Hub module dir."""
    src = Path(src)
    if src.name.endswith(".index") or ".data-" in src.name:
        src = Path(re.sub(r"\.(index|data-\d+-of-\d+)$", "", str(src)))
    if Path(f"{src}.index").is_file():
        return src
    if src.is_dir():
        state = src / "checkpoint"
        if state.is_file():
            m = re.search(r'^model_checkpoint_path:\s*"(.*)"', state.read_text(errors="replace"), re.M)
            if m:
                prefix = Path(m[1]) if Path(m[1]).is_absolute() else src / m[1]
                if Path(f"{prefix}.index").is_file():
                    return prefix
                # The state file may carry the writer's absolute path: fall back to the same name here.
                if Path(f"{src / Path(m[1]).name}.index").is_file():
                    return src / Path(m[1]).name
        steps = sorted((int(m[1]), p) for p in src.glob("*.ckpt-*.index")
                       if (m := re.search(r"\.ckpt-(\d+)\.index$", p.name)))
        if steps:
            return Path(str(steps[-1][1])[:-len(".index")])
        indexes = sorted(src.glob("*.index"))
        if len(indexes) == 1:
            return Path(str(indexes[0])[:-len(".index")])
        # A SavedModel or TF-Hub module (the TF1 checkpoint beside them is preferred: it has the EMA copy).
        for sub in (src / "variables", src / "saved_model" / "variables", src / "hub" / "variables"):
            if (sub / "variables.index").is_file():
                return sub / "variables"
    if not src.exists():
        raise TFImportError(f"{src} does not exist")
    raise TFImportError(f"no TensorFlow checkpoint in {src} (looked for a 'checkpoint' file, model.ckpt-N.index, "
                        f"variables/variables.index)")


# ---- official creation order -----------------------------------------------------------------------

def creation_order(encoder: ResNet) -> tuple[list[str], list[str]]:
    """Our module names of the encoder's convs and BNs in the order the official code creates them.

    Position ``i`` of the first list is ``base_model/conv2d_i``, of the second
    ``base_model/batch_normalization_i`` (``_0`` being unsuffixed).
    """
    names = {m: n for n, m in encoder.named_modules()}
    convs: list[str] = []
    bns: list[str] = []

    def conv_bn(m: nn.Module) -> None:
        if isinstance(m, ConvBnAct):
            convs.append(names[m[0]])
            bns.append(names[m[1]])
        elif isinstance(m, SelectiveKernelConv):  # 3x3 conv + BN, squeeze conv + BN, expand conv (no BN)
            conv_bn(m.conv)
            conv_bn(m.squeeze)
            convs.append(names[m.expand])
        elif isinstance(m, nn.Sequential):  # projection shortcut: [pools...,] conv, BN
            convs.append(names[m[-2]])
            bns.append(names[m[-1]])
        else:
            raise TypeError(f"unexpected module {type(m).__name__}")

    for m in encoder.stem:
        if isinstance(m, ConvBnAct):
            conv_bn(m)
    for stage in encoder.stages:
        for block in stage:
            if not isinstance(block.shortcut, nn.Identity):
                conv_bn(block.shortcut)
            conv_bn(block.conv1)
            conv_bn(block.conv2)
            if isinstance(block, Bottleneck):
                conv_bn(block.conv3)
            else:
                assert isinstance(block, BasicBlock)
    return convs, bns


def _tf_name(kind: str, i: int) -> str:
    return f"base_model/{kind}" + (f"_{i}" if i else "")


def _numbered(names: set[str], kind: str, leaf: str) -> int:
    """How many consecutive ``base_model/<kind>[_i]/<leaf>`` there are from 0."""
    n = 0
    while f"{_tf_name(kind, n)}/{leaf}" in names:
        n += 1
    return n


def _expected_shapes(arch: OfficialArch) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]], int]:
    """TF shapes of the conv kernels and BN gammas of ``arch``, in creation order, and the feature width."""
    with torch.device("meta"):
        enc = arch.encoder()
    modules = dict(enc.named_modules())
    convs, bns = creation_order(enc)
    conv_shapes = [tuple(modules[n].weight.shape[i] for i in (2, 3, 1, 0)) for n in convs]
    bn_shapes = [(modules[n].num_features,) for n in bns]
    return conv_shapes, bn_shapes, enc.num_features


def _candidates(conv_shapes: list[tuple[int, ...]]) -> list[OfficialArch]:
    out = []
    for depth in RESNET_SPECS:
        for sk in (False, True):
            for cifar in (False, True):
                if sk and not cifar:
                    if len(conv_shapes) < 3:
                        continue
                    width = conv_shapes[2][3] / 64
                else:
                    width = conv_shapes[0][3] / 64
                out.append(OfficialArch(depth, width, sk, cifar))
    return out


def infer_arch(shapes: dict[str, tuple[int, ...]], given: OfficialArch | None) -> OfficialArch:
    """The architecture whose every conv/BN shape equals the file's (checked against ``given`` if set)."""
    names = set(shapes)
    n_conv = _numbered(names, "conv2d", "kernel")
    n_bn = _numbered(names, "batch_normalization", "gamma")
    conv_shapes = [shapes[f"{_tf_name('conv2d', i)}/kernel"] for i in range(n_conv)]
    bn_shapes = [shapes[f"{_tf_name('batch_normalization', i)}/gamma"] for i in range(n_bn)]
    if not n_conv or len(conv_shapes[0]) != 4:
        raise TFImportError("not a SimCLR ResNet checkpoint: no 4-D base_model/conv2d/kernel")
    found = None
    for cand in _candidates(conv_shapes):
        try:
            exp_conv, exp_bn, _ = _expected_shapes(cand)
        except ValueError:
            continue
        if exp_conv == conv_shapes and exp_bn == bn_shapes:
            found = cand
            break
    if given is not None:
        exp_conv, exp_bn, _ = _expected_shapes(given)
        if exp_conv != conv_shapes or exp_bn != bn_shapes:
            says = f"the tensors say {found.name}" if found else "the tensors match no SimCLRv2 ResNet"
            diff = _first_difference(exp_conv, conv_shapes, "conv2d") or _first_difference(exp_bn, bn_shapes,
                                                                                             "batch_normalization")
            raise TFImportError(f"--arch {given.name} contradicts the checkpoint ({diff}); {says}")
        # Same tensors (e.g. sk0/sk1 ResNet-18 with a CIFAR stem differ only in a parameter-free pool): trust --arch.
        return given
    if found is None:
        raise TFImportError(f"the checkpoint's {n_conv} convolutions and {n_bn} batch norms match no SimCLRv2 "
                            f"ResNet (depth {'/'.join(map(str, RESNET_SPECS))}, sk0/sk1)")
    return found


def _first_difference(expected: list, actual: list, kind: str) -> str:
    if len(expected) != len(actual):
        return f"{len(actual)} base_model/{kind} layers, expected {len(expected)}"
    for i, (e, a) in enumerate(zip(expected, actual)):
        if e != a:
            return f"{_tf_name(kind, i)} is {list(a)}, expected {list(e)}"
    return ""


# ---- conversion -----------------------------------------------------------------------------------

@dataclass
class Imported:
    """The converted networks and their metadata, not yet written."""

    arch: OfficialArch
    prefix: Path
    pretrain: tuple[nn.Module, dict[str, Any]] | None = None
    classifier: tuple[nn.Module, dict[str, Any]] | None = None
    skipped: int = 0
    used: int = 0


def _skipped(name: str) -> bool:
    """Tensors deliberately not imported: optimizer slots, the memory buffer, the step counter."""
    leaf = name.rsplit("/", 1)[-1]
    return (name == "global_step" or leaf.startswith("Momentum") or "memory" in name
            or name == "_CHECKPOINTABLE_OBJECT_GRAPH")


def _head_input(choice: str, src: Path) -> int:
    """Head layers the supervised head reads: 1 (nl_0 output) for the 1%/10% fine-tuned models, else 0."""
    if choice == "auto":
        return 1 if re.search(r"finetuned_(1|10)pct", str(src.resolve())) else 0
    if choice == "encoder":
        return 0
    if choice in HEAD_INPUTS:
        return int(choice[3:]) + 1
    raise TFImportError(f"bad --head-input {choice!r}; choose one of {', '.join(HEAD_INPUTS)}")


class _Source:
    """The chosen copy of the variables (main or EMA), reading each at most once and recording use."""

    def __init__(self, bundle: TFBundle, ema: bool) -> None:
        self.bundle = bundle
        self.labels: dict[str, str] = {}  # bundle key -> name in messages (TF2: the variable's name)
        self.used: set[str] = set()
        if tf2_graph.is_tf2(bundle):
            self._tf2(ema)
            return
        names = bundle.names()
        ema_names = [n for n in names if n.startswith(EMA)]
        if ema and not ema_names:
            raise TFImportError("--ema: the checkpoint has no ema_model/ copy")
        self.map: dict[str, str] = {}
        self.skipped = 0
        for n in names:
            if _skipped(n) or (n.startswith(EMA) and not ema):
                self.skipped += 1
            elif n.startswith(EMA):
                self.map[n[len(EMA):]] = n
            elif ema and f"{EMA}{n}" in bundle.entries:
                self.skipped += 1  # the main copy of a variable whose EMA copy is taken
            else:
                self.map[n] = n

    def _tf2(self, ema: bool) -> None:
        """A TF2 SavedModel or training checkpoint: TF1 names from the object graph (see tf2_graph)."""
        if ema:
            raise TFImportError("--ema: TF2 checkpoints hold one copy of the weights (no ema_model/)")
        try:
            self.map, skipped, self.labels = tf2_graph.tf1_names(self.bundle)
        except tf2_graph.TF2Error as e:
            raise TFImportError(str(e)) from None
        known = set(self.map.values())
        for key in self.bundle.names():  # unknown tensors stay in the map under their key: leftover() names them
            if key not in known and key not in skipped:
                self.map[key] = key
        self.skipped = len(skipped & set(self.bundle.entries))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: self.bundle.entries[v].shape for k, v in self.map.items()}

    def __contains__(self, name: str) -> bool:
        return name in self.map

    def get(self, name: str) -> Tensor:
        if name not in self.map:
            raise TFImportError(f"the checkpoint has no tensor {name}")
        self.used.add(name)
        try:
            value = self.bundle.read(self.map[name])
        except BundleError as e:
            raise TFImportError(str(e)) from None
        if value.dtype != np.float32:
            raise TFImportError(f"{self.map[name]} is {value.dtype}, expected float32")
        return torch.from_numpy(value)

    def leftover(self) -> list[str]:
        return sorted(self.labels.get(self.map[n], self.map[n]) for n in set(self.map) - self.used)


def _bn(src: _Source, tf: str, ours: str, out: dict[str, Tensor], shift: bool = True) -> None:
    out[f"{ours}.weight"] = src.get(f"{tf}/gamma")
    if shift:
        out[f"{ours}.bias"] = src.get(f"{tf}/beta")
    out[f"{ours}.running_mean"] = src.get(f"{tf}/moving_mean")
    out[f"{ours}.running_var"] = src.get(f"{tf}/moving_variance")
    out[f"{ours}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)


def _encoder_state(src: _Source, arch: OfficialArch) -> dict[str, Tensor]:
    with torch.device("meta"):
        enc = arch.encoder()
    convs, bns = creation_order(enc)
    state: dict[str, Tensor] = {}
    for i, name in enumerate(convs):
        state[f"{name}.weight"] = src.get(f"{_tf_name('conv2d', i)}/kernel").permute(3, 2, 0, 1).contiguous()
    for i, name in enumerate(bns):
        _bn(src, _tf_name("batch_normalization", i), name, state)
    return state


def _head_state(src: _Source, num_layers: int, prefix: str) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for i in range(num_layers):
        tf = f"head_contrastive/nl_{i}"
        state[f"{prefix}{i}.0.weight"] = src.get(f"{tf}/dense/kernel").t().contiguous()
        _bn(src, f"{tf}/batch_normalization", f"{prefix}{i}.1", state, shift=i < num_layers - 1)
    return state


def _assign(net: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """Put ``state`` into the meta-device network ``net`` (exact key and shape match)."""
    own = net.state_dict()
    if set(own) != set(state):
        raise AssertionError(f"importer bug: keys differ: {sorted(set(own) ^ set(state))[:5]}")
    for k, v in state.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise TFImportError(f"{k}: checkpoint shape {tuple(v.shape)}, network {tuple(own[k].shape)}")
    net.load_state_dict(state, assign=True)
    return net.eval()


def import_tf(src: str | Path, arch: str | None = None, ema: bool = False, head_input: str = "auto") -> Imported:
    """Read and convert; raises :class:`TFImportError` on anything unexpected. Writes nothing."""
    prefix = find_prefix(src)
    try:
        bundle = TFBundle(prefix)
        bundle.check_shards()
    except BundleError as e:
        raise TFImportError(str(e)) from None
    source = _Source(bundle, ema)
    if "base_model/conv2d/kernel" not in source:
        some = ", ".join(list(source.map.values())[:3]) or "nothing but skipped tensors"
        raise TFImportError(f"{prefix} is not a SimCLR ResNet checkpoint (no base_model/conv2d/kernel; it holds "
                            f"{some}, ...)")
    shapes = source.shapes()
    official = infer_arch(shapes, parse_arch(arch) if arch else None)
    encoder_state = _encoder_state(source, official)
    with torch.device("meta"):
        features = official.encoder().num_features

    num_layers = 0
    while f"head_contrastive/nl_{num_layers}/dense/kernel" in source:
        num_layers += 1
    dims = [features] + [shapes[f"head_contrastive/nl_{i}/dense/kernel"][1] for i in range(num_layers)]
    for i in range(num_layers):
        kernel = f"head_contrastive/nl_{i}/dense/kernel"
        if shapes[kernel][0] != dims[i]:
            raise TFImportError(f"{kernel} is {list(shapes[kernel])}, its input should be {dims[i]} wide")
    head_dim = dims[1] if num_layers > 1 else None
    proj_dim = dims[-1] if num_layers else 128
    base = preset("cifar10" if official.cifar_stem else "imagenet")
    model_cfg = {"model": f"resnet{official.depth}", "width": official.width,
                 "sk_ratio": SK_RATIO if official.sk else 0.0, "cifar_stem": official.cifar_stem,
                 "head_layers": num_layers, "head_dim": None if head_dim == features else head_dim,
                 "proj_dim": proj_dim, "ft_layer": min(1, num_layers)}
    cfg = merge(base, {"model": model_cfg}, where="import-tf")
    common = {"stage": "import-tf", "source": str(prefix), "official_arch": official.name, "ema": ema,
              "image_size": cfg.data.image_size, "preprocessing": "RGB in [0, 1], no mean/std"}
    result = Imported(official, prefix)

    with torch.device("meta"):
        pre_net = SimCLRModel(official.encoder(), ProjectionHead(features, cfg.model.head_dim, proj_dim, num_layers))
    head_state = _head_state(source, num_layers, "head.layers.")
    state = {f"encoder.{k}": v for k, v in encoder_state.items()} | head_state
    pre_net = _assign(pre_net, state)
    result.pretrain = (pre_net, {**common, "kind": "pretrain", "arch": arch_of(cfg.model), "config": cfg.to_dict()})

    if f"{SUPERVISED}kernel" in source:
        kept = _head_input(head_input, Path(src))
        if kept > num_layers:
            raise TFImportError(f"--head-input {head_input}: the checkpoint has {num_layers} projection-head layers")
        kernel, bias = source.get(f"{SUPERVISED}kernel"), source.get(f"{SUPERVISED}bias")
        if kernel.shape[0] != dims[kept]:
            raise TFImportError(f"{SUPERVISED}kernel reads {kernel.shape[0]} features, but the chosen input "
                                f"({HEAD_INPUTS[kept + 1]}) has {dims[kept]}")
        num_classes = kernel.shape[1]
        classes = list(IMAGENET_WNIDS) if num_classes == len(IMAGENET_WNIDS) else [str(i) for i in range(num_classes)]
        with torch.device("meta"):
            head = ProjectionHead(features, cfg.model.head_dim, proj_dim, num_layers)
            cls_net = Classifier(official.encoder(), head.layers_upto(kept), dims[kept], num_classes, zero_init=False)
        state = {f"encoder.{k}": v for k, v in encoder_state.items()}
        state |= {k.replace("head.layers.", "head."): v for k, v in head_state.items()
                  if int(k.split(".")[2]) < kept}
        state |= {"fc.weight": kernel.t().contiguous(), "fc.bias": bias}
        cls_cfg = merge(cfg, {"model": {"ft_layer": kept}}, where="import-tf")
        result.classifier = (_assign(cls_net, state), {
            **common, "kind": "classifier", "arch": arch_of(cls_cfg.model, num_classes, kept),
            "config": cls_cfg.to_dict(), "classes": classes, "head_input": HEAD_INPUTS[kept + 1],
            "class_order": CLASS_ORDER if num_classes == len(IMAGENET_WNIDS) else "as in the checkpoint"})

    leftover = source.leftover()
    if leftover:
        more = f" and {len(leftover) - 3} more" if len(leftover) > 3 else ""
        raise TFImportError(f"unknown tensor(s) in the checkpoint: {', '.join(leftover[:3])}{more}")
    result.used, result.skipped = len(source.used), source.skipped
    return result


def write(result: Imported, out: str | Path) -> list[Path]:
    """Write the converted checkpoints under ``out``; returns their stems."""
    out = Path(out)
    stems = []
    for name, item in (("pretrain", result.pretrain), ("classifier", result.classifier)):
        if item is not None:
            net, meta = item
            meta = {**meta, "params": sum(p.numel() for p in net.parameters())}
            stems.append(checkpoint.save(out / name, net, meta))
    return stems
