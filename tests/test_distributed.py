"""Two gloo processes with half the batch each vs one process with the whole batch: same loss, same
gradients, same step (global negatives via the autograd all-gather, global BatchNorm). And the queue."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from simclrv2 import distributed
from simclrv2.config import ModelConfig
from simclrv2.losses import nt_xent
from simclrv2.models.networks import build_pretrain_model
from simclrv2.optim import LARS, param_groups
from simclrv2.train.memory import MemoryQueue, MovingAverage

BATCH = 8
TEMPERATURE = 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_and_views():
    torch.manual_seed(0)
    net = build_pretrain_model(ModelConfig(model="resnet18", width=0.125, cifar_stem=True, head_layers=3)).double()
    g = torch.Generator().manual_seed(1)
    va = torch.rand(BATCH, 3, 8, 8, generator=g, dtype=torch.float64)
    vb = torch.rand(BATCH, 3, 8, 8, generator=g, dtype=torch.float64)
    return net, va, vb


def _step(net, model, va, vb, offset):
    """Forward both views, NT-Xent with all ranks' negatives, backward, record, one LARS step."""
    n = va.shape[0]
    z = model(torch.cat([va, vb]))
    za, zb = z[:n], z[n:]
    loss = nt_xent(za, zb, TEMPERATURE, distributed.gather_with_grad(za), distributed.gather_with_grad(zb), offset)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in net.named_parameters()}
    opt = LARS(param_groups(net, 1e-4), lr=0.5, momentum=0.9)
    opt.step()
    params = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return distributed.mean(loss.detach()).item(), grads, params


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net, va, vb = _model_and_views()
        model = distributed.wrap(net, distributed.current(), torch.device("cpu"))
        n = BATCH // world
        part = slice(rank * n, (rank + 1) * n)
        result = _step(net, model, va[part], vb[part], rank * n)
        if rank == 0:
            torch.save(result, out)
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module")
def two_process_result(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dist") / "rank0.pt")
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, start_method="spawn")
    return torch.load(out, weights_only=True)


def test_two_processes_equal_one_process_loss_gradients_and_step(two_process_result):
    net, va, vb = _model_and_views()
    loss, grads, params = _step(net, net, va, vb, 0)
    d_loss, d_grads, d_params = two_process_result
    assert d_loss == pytest.approx(loss, rel=1e-9)
    assert grads.keys() == d_grads.keys()
    for k in grads:
        torch.testing.assert_close(d_grads[k], grads[k], rtol=1e-5, atol=1e-9, msg=f"gradient of {k}")
    for k in params:  # weights after one LARS step, and BatchNorm running statistics
        torch.testing.assert_close(d_params[k], params[k], rtol=1e-5, atol=1e-9, msg=f"{k} after one step")


def test_without_a_process_group_everything_is_local():
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather_with_grad(x) is x
    assert distributed.current().size == 1 and distributed.shard(distributed.current()) is None
    assert torch.equal(distributed.mean(torch.tensor(2.0)), torch.tensor(2.0))
    with pytest.raises(ValueError, match="not divisible"):
        distributed.per_rank_batch(10, distributed.World(0, 3))


def test_shard_takes_each_ranks_contiguous_part():
    index = torch.arange(12)
    parts = [distributed.shard(distributed.World(r, 3))(index) for r in range(3)]
    assert torch.equal(torch.cat(parts), index)


def test_queue_order_and_wrap_around():
    q = MemoryQueue(5, 2)
    assert q.negatives().shape == (0, 2)
    q.enqueue(torch.tensor([[1.0, 1], [2, 2], [3, 3]]))
    assert q.ordered()[:, 0].tolist() == [1, 2, 3]
    q.enqueue(torch.tensor([[4.0, 4], [5, 5], [6, 6]]))  # wraps: 1 is dropped
    assert q.ordered()[:, 0].tolist() == [2, 3, 4, 5, 6] and int(q.filled) == 5
    q.enqueue(torch.arange(14.0).view(7, 2))  # more than fits: the newest 5 stay
    assert q.ordered()[:, 0].tolist() == [4.0, 6.0, 8.0, 10.0, 12.0]
    state = q.state_dict()
    r = MemoryQueue(5, 2)
    r.load_state_dict(state)
    assert torch.equal(r.ordered(), q.ordered())


def test_queued_entries_carry_no_gradient():
    q = MemoryQueue(4, 3)
    keys = torch.randn(2, 3, requires_grad=True)
    q.enqueue(keys * 2)
    assert not q.negatives().requires_grad
    z = torch.randn(2, 3, requires_grad=True)
    nt_xent(z, z + 0.1, 0.1, queue=q.negatives()).backward()
    assert keys.grad is None and z.grad is not None


def test_moving_average_update_rule():
    net = torch.nn.Linear(2, 1)
    ema = MovingAverage(net, decay=0.9)
    before = ema.net.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    torch.testing.assert_close(ema.net.weight, 0.9 * before + 0.1 * net.weight)
    assert not any(p.requires_grad for p in ema.parameters())
