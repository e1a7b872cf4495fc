"""The epoch loop: a non-finite loss stops the run and keeps the last good checkpoint."""

import pytest
import torch
from torch import nn

from simclrv2 import checkpoint
from simclrv2.train.stepper import NonFiniteLossError, Stepper
from simclrv2.train.loop import Stage, fit


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    net = nn.Linear(2, 1)
    stepper = Stepper(torch.optim.SGD(net.parameters(), lr=0.1), 0.1, 0, 100)
    stage = Stage("test", tmp_path, net, stepper, {"stage": "test"}, num_items=8, batch_size=4, epochs=5,
                  drop_last=True, order=torch.Generator().manual_seed(0))
    x = torch.randn(8, 2)
    calls = []

    def loss_of(idx):
        calls.append(1)
        loss = net(x[idx]).pow(2).mean()
        return loss * float("nan") if len(calls) == 4 else loss  # epoch 2, second step

    with pytest.raises(NonFiniteLossError, match="loss is nan at step 3"):
        fit(stage, loss_of, show_progress=False)
    tensors, meta = checkpoint.load(tmp_path / "last")
    assert meta["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in tensors.values())
