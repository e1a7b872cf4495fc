"""The networks each stage trains: encoder + projection head, and encoder (+ head layers) + classifier."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from simclrv2.config import ModelConfig
from simclrv2.models.head import ProjectionHead
from simclrv2.models.registry import build_encoder


class SimCLRModel(nn.Module):
    """Encoder and projection head; ``forward`` returns the projection used by the contrastive loss."""

    def __init__(self, encoder: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward_features(self, x: Tensor) -> Tensor:
        return self.encoder.forward_features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))[-1]


class Classifier(nn.Module):
    """Encoder, the first ``k`` projection-head layers, and a linear classifier on top."""

    def __init__(self, encoder: nn.Module, head_layers: nn.Module, feature_dim: int, num_classes: int,
                 zero_init: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head_layers
        self.fc = nn.Linear(feature_dim, num_classes)
        self.fc.lars_exclude = True  # as the official 'head_supervised': no weight decay, no trust ratio
        if zero_init:  # the official fine-tuning code starts from zero logits
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def arch_of(cfg: ModelConfig, num_classes: int | None = None, head_kept: int | None = None) -> dict[str, Any]:
    """Everything needed to rebuild a network from its weights; saved in every checkpoint."""
    return {
        "model": cfg.model, "width": cfg.width, "sk_ratio": cfg.sk_ratio, "cifar_stem": cfg.cifar_stem,
        "head_layers": cfg.head_layers, "head_dim": cfg.head_dim, "proj_dim": cfg.proj_dim,
        "head_kept": head_kept, "num_classes": num_classes,
    }


def _encoder_and_head(arch: dict[str, Any]) -> tuple[nn.Module, ProjectionHead]:
    encoder = build_encoder(arch["model"], width=arch["width"], sk_ratio=arch["sk_ratio"],
                            cifar_stem=arch["cifar_stem"])
    head = ProjectionHead(encoder.num_features, arch["head_dim"], arch["proj_dim"], arch["head_layers"])
    return encoder, head


def build_pretrain_model(cfg: ModelConfig) -> SimCLRModel:
    return SimCLRModel(*_encoder_and_head(arch_of(cfg)))


def classifier_from(model: SimCLRModel, head_kept: int, num_classes: int) -> Classifier:
    """Fine-tuning network: the pretrained encoder and first ``head_kept`` head layers (shared weights)."""
    head: ProjectionHead = model.head
    return Classifier(model.encoder, head.layers_upto(head_kept), head.dims[head_kept], num_classes)


def build_network(arch: dict[str, Any]) -> nn.Module:
    """A randomly initialised network of the architecture ``arch`` (see :func:`arch_of`)."""
    model = SimCLRModel(*_encoder_and_head(arch))
    if arch.get("num_classes") is None:
        return model
    return classifier_from(model, arch["head_kept"] or 0, arch["num_classes"])
