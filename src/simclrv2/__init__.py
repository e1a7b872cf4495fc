"""simclrv2: SimCLRv2 in PyTorch — contrastive pretraining, few-label fine-tuning, distillation.

The public Python API is what ``__all__`` lists (see the README, "Use from Python"): :func:`load` a
checkpoint and use it (:class:`Model`), or build the networks, the loss, the optimizer, the schedule
and the augmentation for a training loop of your own. The names are imported on first use, so
``import simclrv2`` stays fast (it does not import torch) and does no I/O.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "load": "simclrv2.api",
    "Model": "simclrv2.api",
    "Prediction": "simclrv2.api",
    "list_images": "simclrv2.api",
    "build_simclr": "simclrv2.api",
    "build_classifier": "simclrv2.api",
    "build_encoder": "simclrv2.models.registry",
    "list_encoders": "simclrv2.models.registry",
    "nt_xent": "simclrv2.losses.ntxent",
    "LARS": "simclrv2.optim.lars",
    "param_groups": "simclrv2.optim.build",
    "lr_at": "simclrv2.optim.schedule",
    "scaled_lr": "simclrv2.optim.schedule",
    "ViewMaker": "simclrv2.data.views",
    "simclr_views": "simclrv2.data.gpu_augment",
    "crop_flip": "simclrv2.data.gpu_augment",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from simclrv2.api import Model, Prediction, build_classifier, build_simclr, list_images, load
    from simclrv2.data.gpu_augment import crop_flip, simclr_views
    from simclrv2.data.views import ViewMaker
    from simclrv2.losses.ntxent import nt_xent
    from simclrv2.models.registry import build_encoder, list_encoders
    from simclrv2.optim.build import param_groups
    from simclrv2.optim.lars import LARS
    from simclrv2.optim.schedule import lr_at, scaled_lr


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'simclrv2' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
