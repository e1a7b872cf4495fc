"""Name the variables of an official SimCLRv2 TF2 SavedModel (or TF2 training checkpoint) as TF1 would.

A TF2 bundle keys its tensors by object-graph paths (``.../.ATTRIBUTES/VARIABLE_VALUE``) and stores
the graph itself, a serialized ``TrackableObjectGraph``, under ``_CHECKPOINTABLE_OBJECT_GRAPH``. A
variable's key is the *shortest* path to it, so the keys alone do not say where a variable sits:
the official export puts every trainable variable at ``trainable_variables_list/<i>``. The mapping
therefore walks the object graph by attribute names, from the Keras model down, and lists the
convolutions and batch norms in the order the official code creates them; the result uses the TF1
names (``base_model/conv2d_<i>/kernel``, ``head_contrastive/nl_<i>/...``), so the TF1 importer's
shape checks and arch inference apply unchanged.

Facts of google-research/simclr ``tf2/`` this relies on (read from resnet.py, model.py, run.py):

* run.py exports ``tf.saved_model.save(SimCLRModel(model))``, a ``tf.Module`` with attributes
  ``model`` (the Keras model) and ``trainable_variables_list`` (``model.trainable_variables``).
  TF2 training checkpoints are ``tf.train.Checkpoint(model=..., global_step=..., optimizer=...)``.
  Neither has an EMA copy (the TF2 code keeps none); the SavedModel holds no optimizer state.
* ``Model``: ``resnet_model`` (``Resnet``), ``_projection_head`` (``ProjectionHead``), and
  ``supervised_head`` (``SupervisedHead``) when fine-tuning or with linear eval while pretraining.
* ``Resnet``: list ``initial_conv_relu_max_pool`` (stem layers in call order), list ``block_groups``
  of four ``BlockGroup``, each with list ``layers`` of blocks (the first with the projection).
* ``BottleneckBlock``: list ``projection_layers`` (created first: [FixedPadding, AveragePooling2D,]
  Conv2dFixedPadding, BatchNormRelu), ``shortcut_dropblock``, list ``conv_relu_dropblock_layers``
  (conv, BN, DropBlock, SK_Conv2D or conv + BN, DropBlock, conv, BN, DropBlock).
  ``ResidualBlock`` (ResNet-18/34): lists ``shortcut_layers`` and ``conv2d_bn_layers``.
* ``Conv2dFixedPadding``: ``conv2d`` (Keras Conv2D, ``kernel``; no bias), ``fixed_padding``.
  ``BatchNormRelu``: ``bn`` (Keras [Sync]BatchNormalization: ``gamma``, ``beta``, ``moving_mean``,
  ``moving_variance``). ``SK_Conv2D``: ``conv2d_fixed_padding``, ``batch_norm_relu``, ``conv2d_0``
  (Conv2D, ``kernel``), ``batch_norm_relu_1``, ``conv2d_1`` (Conv2D, ``kernel``), created in that order.
* ``ProjectionHead``: list ``linear_layers`` of ``LinearLayer`` (``dense``: ``kernel`` [+ ``bias``
  without BN]; ``bn_relu``: a ``BatchNormRelu``, ``center=False`` on the last layer).
  ``SupervisedHead``: ``linear_layer`` (``LinearLayer``: ``dense`` with ``kernel`` and ``bias``).
* The CIFAR stem (``image_size <= 32``) is one 3x3 conv + BN; ResNet-18 uses ``ResidualBlock``.

Checked with tf_keras 2.21 (tf.keras 2, the Keras of the official TF2 code; the test
``test_tf2_saved_model_written_by_tf_keras_2`` runs where it is installed): these classes, exported
as run.py does, store every attribute above under its Python name (``_projection_head`` included;
lists as children ``"0"``, ``"1"``, ...; ``BlockGroup.layers`` as its blocks), and key the tensors
``trainable_variables_list/<i>`` and ``model/resnet_model/variables/<i>`` (Keras adds such lists).

Unconfirmed (no released file was available to check): that the released SavedModels were written
by this export (they were converted from the TF1 checkpoints by a script not in the repository;
public code that loads them calls ``saved_model(x, trainable=False)`` and reads ``final_avg_pool``,
the signature of run.py's export), and with a tf.keras of 2020 that tracked attributes as 2.21 does.
A file that differs fails with an error naming what is missing or left over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from simclrv2.errors import UserError
from simclrv2.official.tf_bundle import BundleError, TFBundle, proto_fields

__all__ = ["OBJECT_GRAPH", "ObjectGraph", "TF2Error", "is_tf2", "tf1_names"]

OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
VALUE = "VARIABLE_VALUE"
# Children of a tf.train.Checkpoint root that hold no weights of the model.
SKIPPED_ROOT_CHILDREN = ("optimizer", "global_step", "save_counter")
BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")


class TF2Error(UserError):
    """The TF2 object graph is missing, corrupt, or not the official SimCLR model's."""


@dataclass
class Node:
    """One ``TrackableObject``: named children, serialized tensors (attribute -> key), slot variables."""

    children: dict[str, int] = field(default_factory=dict)
    tensors: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (full_name, checkpoint_key)
    slots: list[int] = field(default_factory=list)


class ObjectGraph:
    """A parsed ``TrackableObjectGraph`` (node 0 is the root)."""

    def __init__(self, data: bytes) -> None:
        self.nodes: list[Node] = []
        try:
            for number, raw in proto_fields(data):
                if number != 1:
                    continue
                node = Node()
                for f, value in proto_fields(raw):
                    msg = dict(proto_fields(value)) if f in (1, 2, 3) else {}
                    if f == 1:  # ObjectReference: node_id, local_name
                        node.children[msg.get(2, b"").decode()] = msg.get(1, 0)
                    elif f == 2:  # SerializedTensor: name, full_name, checkpoint_key
                        node.tensors[msg.get(1, b"").decode()] = (msg.get(2, b"").decode(), msg.get(3, b"").decode())
                    elif f == 3:  # SlotVariableReference: slot_variable_node_id
                        node.slots.append(msg.get(3, 0))
                self.nodes.append(node)
        except (BundleError, UnicodeDecodeError, AttributeError, TypeError) as e:
            raise TF2Error(f"corrupt {OBJECT_GRAPH}: {e}") from None
        if not self.nodes or any(c >= len(self.nodes) for n in self.nodes for c in [*n.children.values(), *n.slots]):
            raise TF2Error(f"corrupt {OBJECT_GRAPH}: reference to a node that does not exist")

    def child(self, node: int | None, *path: str) -> int | None:
        for name in path:
            if node is None:
                return None
            node = self.nodes[node].children.get(name)
        return node

    def items(self, node: int | None, name: str) -> list[int]:
        """The elements of list attribute ``name`` (children ``"0"``, ``"1"``, ...), in list order."""
        lst = self.child(node, name)
        if lst is None:
            return []
        kids = self.nodes[lst].children
        return [kids[k] for k in sorted((k for k in kids if k.isdigit()), key=int)]

    def key(self, node: int | None, *path: str) -> str | None:
        """The checkpoint key of the variable at ``path`` below ``node`` (None if absent)."""
        node = self.child(node, *path)
        if node is None or VALUE not in self.nodes[node].tensors:
            return None
        return self.nodes[node].tensors[VALUE][1]

    def keys_below(self, node: int) -> set[str]:
        """Checkpoint keys of every tensor reachable from ``node``."""
        seen, stack, keys = {node}, [node], set()
        while stack:
            n = self.nodes[stack.pop()]
            keys |= {key for _, key in n.tensors.values()}
            for c in list(n.children.values()) + n.slots:
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        return keys


def is_tf2(bundle: TFBundle) -> bool:
    return OBJECT_GRAPH in bundle.entries and any("/.ATTRIBUTES/" in n for n in bundle.entries)


class _Walk:
    """Collects the model's variables under their TF1 names."""

    def __init__(self, graph: ObjectGraph) -> None:
        self.g = graph
        self.names: dict[str, str] = {}  # TF1 name -> checkpoint key
        self.convs = 0
        self.bns = 0

    def put(self, name: str, key: str | None) -> None:
        if key is not None:
            self.names[name] = key

    def conv_kernel(self, key: str | None) -> None:
        if key is None:
            raise TF2Error(f"base_model/conv2d_{self.convs}: a convolution without a kernel (layer never built?)")
        self.put("base_model/conv2d" + (f"_{self.convs}" if self.convs else "") + "/kernel", key)
        self.convs += 1

    def bn(self, node: int | None, name: str | None = None) -> None:
        if name is None:
            name = "base_model/batch_normalization" + (f"_{self.bns}" if self.bns else "")
            self.bns += 1
        for v in BN_VARIABLES:
            self.put(f"{name}/{v}", self.g.key(node, v))

    def layer(self, node: int) -> None:
        """A layer of the encoder: conv, BN, SK conv, or one without variables (pad, pool, identity, dropblock)."""
        g = self.g
        if g.child(node, "conv2d") is not None:  # Conv2dFixedPadding
            self.conv_kernel(g.key(node, "conv2d", "kernel"))
        elif g.child(node, "bn") is not None:  # BatchNormRelu
            self.bn(g.child(node, "bn"))
        elif g.child(node, "conv2d_fixed_padding") is not None:  # SK_Conv2D
            self.layer(g.child(node, "conv2d_fixed_padding"))
            self.layer(g.child(node, "batch_norm_relu"))
            self.conv_kernel(g.key(node, "conv2d_0", "kernel"))
            self.layer(g.child(node, "batch_norm_relu_1"))
            self.conv_kernel(g.key(node, "conv2d_1", "kernel"))

    def encoder(self, resnet: int) -> None:
        g = self.g
        for node in g.items(resnet, "initial_conv_relu_max_pool"):
            self.layer(node)
        for group in g.items(resnet, "block_groups"):
            for block in g.items(group, "layers"):
                for lists in (("projection_layers", "conv_relu_dropblock_layers"),  # BottleneckBlock
                              ("shortcut_layers", "conv2d_bn_layers")):  # ResidualBlock
                    for name in lists:  # the projection shortcut is created before the main path
                        for node in g.items(block, name):
                            self.layer(node)

    def heads(self, model: int) -> None:
        g = self.g
        for i, layer in enumerate(g.items(g.child(model, "_projection_head"), "linear_layers")):
            tf1 = f"head_contrastive/nl_{i}"
            self.put(f"{tf1}/dense/kernel", g.key(layer, "dense", "kernel"))
            self.put(f"{tf1}/dense/bias", g.key(layer, "dense", "bias"))
            self.bn(g.child(layer, "bn_relu", "bn"), f"{tf1}/batch_normalization")
        dense = g.child(model, "supervised_head", "linear_layer", "dense")
        for v in ("kernel", "bias"):
            self.put(f"head_supervised/linear_layer/dense/{v}", g.key(dense, v))


def tf1_names(bundle: TFBundle) -> tuple[dict[str, str], set[str], dict[str, str]]:
    """(TF1 name -> key of the model's variables, keys deliberately skipped, key -> variable name).

    Skipped: the object graph itself; in a ``tf.train.Checkpoint``, whatever hangs off the root's
    ``optimizer``, ``global_step`` and ``save_counter``; optimizer slot variables; serialized
    non-variable state (attributes other than ``VARIABLE_VALUE``, e.g. a Keras ``OBJECT_CONFIG_JSON``).

    Keys in neither are unknown tensors; the caller reports them by variable name.
    """
    try:
        raw = bundle.read(OBJECT_GRAPH)
    except BundleError as e:
        raise TF2Error(str(e)) from None
    if raw.shape != () or not isinstance(raw.item(), bytes):
        raise TF2Error(f"{OBJECT_GRAPH} is not a serialized object graph")
    g = ObjectGraph(raw.item())
    labels = {key: full or key for n in g.nodes for full, key in n.tensors.values()}
    model = 0 if g.child(0, "resnet_model") is not None else g.child(0, "model")
    resnet = g.child(model, "resnet_model")
    if resnet is None:
        some = ", ".join(sorted(g.nodes[0].children)[:5]) or "nothing"
        raise TF2Error(f"not a SimCLR TF2 model: its object graph has no model/resnet_model (the root holds {some})")
    walk = _Walk(g)
    walk.encoder(resnet)
    walk.heads(model)
    skipped = {OBJECT_GRAPH}
    if model != 0:  # a tf.train.Checkpoint: the optimizer, its slots and the counters are not weights
        for name in SKIPPED_ROOT_CHILDREN:
            if g.child(0, name) is not None:
                skipped |= g.keys_below(g.child(0, name))
    for node in g.nodes:
        for slot in node.slots:  # optimizer slot variables, wherever the graph lists them
            skipped |= {key for _, key in g.nodes[slot].tensors.values()}
        # Saved state that is no variable (a Keras object's JSON config, Python state), should a file hold any.
        skipped |= {key for name, (_, key) in node.tensors.items() if name != VALUE}
    if len(set(walk.names.values())) != len(walk.names):
        raise TF2Error("the object graph reaches one variable as two different layers")
    return walk.names, skipped - set(walk.names.values()), labels
