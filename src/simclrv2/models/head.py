"""SimCLRv2 projection head (official ``tf2/model.py`` ``ProjectionHead``, ``proj_head_mode='nonlinear'``)."""

from __future__ import annotations

from torch import Tensor, nn

from simclrv2.models.batchnorm import BatchNorm1d, BatchNormNoShift1d

__all__ = ["ProjectionHead", "BatchNormNoShift1d"]


class ProjectionHead(nn.Module):
    """MLP head whose every intermediate output is returned, so fine-tuning can start from any of them.

    Layer ``i < num_layers``: Linear (no bias: BN follows) + BatchNorm + ReLU, ``hidden_dim`` wide.
    Last layer: Linear (no bias) + BatchNorm without shift, no ReLU, ``out_dim`` wide.
    ``num_layers=0`` is the identity.

    Args:
        in_dim: encoder feature dimension.
        hidden_dim: width of the hidden layers; defaults to ``in_dim`` as in the official code.
        out_dim: projection dimension fed to the contrastive loss.
        num_layers: number of linear layers (SimCLRv2 uses 3).
    """

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128, num_layers: int = 3) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        hidden_dim = hidden_dim or in_dim
        self.dims: list[int] = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim] * (num_layers > 0)
        self.layers = nn.ModuleList()
        for i in range(num_layers):
            d_in, d_out = self.dims[i], self.dims[i + 1]
            if i < num_layers - 1:
                layer = nn.Sequential(nn.Linear(d_in, d_out, bias=False), BatchNorm1d(d_out), nn.ReLU(inplace=True))
            else:
                layer = nn.Sequential(nn.Linear(d_in, d_out, bias=False), BatchNormNoShift1d(d_out))
            self.layers.append(layer)
        self.reset_parameters()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def out_dim(self) -> int:
        """Dimension of the last output (``in_dim`` when the head is the identity)."""
        return self.dims[-1]

    def reset_parameters(self) -> None:
        """Official initialisation: dense kernels ~ N(0, 0.01^2); BN scale 1, shift 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
            elif isinstance(m, nn.BatchNorm1d):
                m.reset_parameters()

    def layers_upto(self, k: int) -> nn.Sequential:
        """The first ``k`` layers (sharing this head's parameters): maps ``x`` to ``forward(x)[k]``.

        This is the official fine-tuning input ``hiddens_list[ft_proj_selector]``; kept hidden
        layers include their ReLU. ``k=0`` gives an empty (identity) ``nn.Sequential``.
        """
        if not 0 <= k <= self.num_layers:
            raise ValueError(f"k must be in [0, {self.num_layers}], got {k}")
        return nn.Sequential(*self.layers[:k])

    def forward(self, x: Tensor) -> list[Tensor]:
        """Returns ``[x, layer 1 output, ..., layer num_layers output]``; the last is the projection."""
        hiddens = [x]
        for layer in self.layers:
            hiddens.append(layer(hiddens[-1]))
        return hiddens
