"""Encoders (ResNet, optionally with selective kernels) and the SimCLRv2 projection head."""

from simclrv2.models.head import ProjectionHead
from simclrv2.models.registry import build_encoder, list_encoders
from simclrv2.models.resnet import ResNet

__all__ = ["build_encoder", "list_encoders", "ResNet", "ProjectionHead"]
