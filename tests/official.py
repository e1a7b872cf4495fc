"""The official SimCLR TF2 code (``../shared/reference/simclr-official/tf2``), imported for equivalence tests.

It is never copied into the project: tests import it from the shared reference folder. Where the folder
or TensorFlow with tf.keras 2 (``tf-keras``) is missing, :func:`load` skips the calling test with one
line that says why. Importing ``run`` needs ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported
(``conftest.py`` sets it) and a ``tensorflow_datasets`` module, which nothing we call uses: an empty
stand-in is registered when the real one is absent.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest

OFFICIAL_TF2 = Path(__file__).resolve().parents[2] / "shared" / "reference" / "simclr-official" / "tf2"
MODULES = ("data_util", "lars_optimizer", "resnet", "model", "objective", "metrics", "run")


def load() -> types.SimpleNamespace:
    """``tf`` plus the official modules (``run``, ``model``, ``resnet``, ``objective``, ``data_util``,
    ``lars_optimizer``, ``metrics``) and absl's parsed ``FLAGS``; skips the test where they cannot run."""
    if not OFFICIAL_TF2.is_dir():
        pytest.skip(f"official SimCLR reference not found at {OFFICIAL_TF2}")
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1" and "tensorflow" not in sys.modules:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import torch._dynamo  # noqa: F401 - imported by torch's first optimizer; after TensorFlow, its triton import segfaults
    try:
        import tensorflow as tf
        import tf_keras  # noqa: F401 - the official code is tf.keras 2 code
    except ImportError as e:
        pytest.skip(f"the official code needs tensorflow and tf-keras (pip install -e '.[test]'): {e}")
    if not tf.keras.__name__.startswith("tf_keras"):
        pytest.skip("tf.keras is Keras 3 here: TF_USE_LEGACY_KERAS=1 must be set before TensorFlow is imported")
    if "tensorflow_datasets" not in sys.modules:
        try:
            import tensorflow_datasets  # noqa: F401
        except ImportError:
            sys.modules["tensorflow_datasets"] = types.ModuleType("tensorflow_datasets")
    if str(OFFICIAL_TF2) not in sys.path:
        sys.path.insert(0, str(OFFICIAL_TF2))
    mods = {name: importlib.import_module(name) for name in MODULES}
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["official-tests"])
    return types.SimpleNamespace(tf=tf, FLAGS=flags.FLAGS, **mods)


def set_flags(FLAGS, **values) -> dict:
    """Set absl flags; returns the old values so that a fixture can restore them."""
    old = {k: getattr(FLAGS, k) for k in values}
    for k, v in values.items():
        setattr(FLAGS, k, v)
    return old
