"""Encoder factory: build a SimCLRv2 ResNet by name."""

from __future__ import annotations

from simclrv2.models.resnet import ResNet

__all__ = ["build_encoder", "list_encoders"]

_DEPTHS: dict[str, int] = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}


def list_encoders() -> list[str]:
    """Names accepted by :func:`build_encoder`."""
    return list(_DEPTHS)


def build_encoder(name: str, width: float = 1.0, sk_ratio: float = 0.0, cifar_stem: bool = False,
                  in_channels: int = 3) -> ResNet:
    """A randomly initialised encoder, e.g. ``build_encoder("resnet50", width=2, sk_ratio=0.0625)``.

    Raises:
        ValueError: ``name`` is not one of :func:`list_encoders`.
    """
    if name not in _DEPTHS:
        raise ValueError(f"unknown encoder {name!r}; valid names: {', '.join(_DEPTHS)}")
    return ResNet(_DEPTHS[name], width=width, sk_ratio=sk_ratio, cifar_stem=cifar_stem, in_channels=in_channels)
