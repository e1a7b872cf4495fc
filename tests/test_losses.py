"""NT-Xent and the distillation loss against their formulas computed naively, element by element."""

import math

import pytest
import torch
import torch.nn.functional as F

from simclrv2.losses import distill_loss, nt_xent


def naive_nt_xent(za, zb, t, all_a=None, all_b=None, offset=0, queue=None):
    """SimCLR's l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t), summed over both views of each of
    the n local images and averaged over the images (the official objective adds the two directions)."""
    a, b = F.normalize(za, dim=1), F.normalize(zb, dim=1)
    A = a if all_a is None else F.normalize(all_a, dim=1)
    B = b if all_b is None else F.normalize(all_b, dim=1)
    cands = torch.cat([A, B])  # global 2N views: A rows 0..N-1, B rows N..2N-1
    N = A.shape[0]
    extra = [] if queue is None else list(F.normalize(queue, dim=1))
    total = 0.0
    for view, pos_shift, self_shift in ((a, N, 0), (b, 0, N)):
        for i in range(view.shape[0]):
            anchor = view[i]
            self_idx = self_shift + offset + i
            pos_idx = pos_shift + offset + i
            denom = 0.0
            for k in range(2 * N):
                if k != self_idx:
                    denom = denom + torch.exp(anchor @ cands[k] / t)
            for q in extra:
                denom = denom + torch.exp(anchor @ q / t)
            total = total - torch.log(torch.exp(anchor @ cands[pos_idx] / t) / denom)
    return total / view.shape[0]


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_matches_naive_loss_and_gradients(t):
    g = torch.Generator().manual_seed(0)
    za = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    zb = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    fast = nt_xent(za.float(), zb.float(), t)
    slow = naive_nt_xent(za, zb, t)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-5)
    ga, gb = torch.autograd.grad(fast, (za, zb))
    sa, sb = torch.autograd.grad(slow, (za, zb))
    torch.testing.assert_close(ga, sa, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gb, sb, rtol=1e-4, atol=1e-6)


def test_nt_xent_with_global_candidates_and_queue():
    """Local anchors at rows 3..5 of a global batch of 8, plus 4 queued negatives."""
    g = torch.Generator().manual_seed(1)
    all_a = torch.randn(8, 4, generator=g, dtype=torch.float64)
    all_b = torch.randn(8, 4, generator=g, dtype=torch.float64)
    queue = torch.randn(4, 4, generator=g, dtype=torch.float64)
    za, zb = all_a[3:6].clone().requires_grad_(), all_b[3:6].clone().requires_grad_()
    big_a = torch.cat([all_a[:3], za, all_a[6:]])
    big_b = torch.cat([all_b[:3], zb, all_b[6:]])
    fast = nt_xent(za, zb, 0.2, big_a, big_b, offset=3, queue=queue)
    slow = naive_nt_xent(za, zb, 0.2, big_a, big_b, offset=3, queue=queue)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-6)
    torch.testing.assert_close(torch.autograd.grad(fast, za)[0], torch.autograd.grad(slow, za)[0])


def test_nt_xent_global_equals_local_when_the_global_batch_is_local():
    g = torch.Generator().manual_seed(2)
    za, zb = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    assert nt_xent(za, zb, 0.5, za, zb, 0).item() == pytest.approx(nt_xent(za, zb, 0.5).item())


def test_nt_xent_queue_gets_no_gradient_and_perfect_pairs_score_low():
    queue = torch.randn(10, 8, requires_grad=True)
    za = (torch.eye(8)[:4] * 3).requires_grad_()
    loss = nt_xent(za, za.clone(), 0.05, queue=queue)
    loss.backward()
    assert queue.grad is None
    assert loss.item() < 0.5  # identical, mutually orthogonal pairs: the positive dominates


def test_nt_xent_rejects_mismatched_views():
    with pytest.raises(ValueError, match="views differ"):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3), 0.1)


def naive_distill(s, t, tau, alpha, labels):
    n = s.shape[0]
    soft = 0.0
    for i in range(n):
        pt = torch.exp(t[i] / tau) / torch.exp(t[i] / tau).sum()
        log_ps = torch.log(torch.exp(s[i] / tau) / torch.exp(s[i] / tau).sum())
        soft = soft - sum(pt[y] * log_ps[y] for y in range(s.shape[1]))
    labeled = [i for i in range(n) if labels[i] >= 0]
    hard = 0.0
    for i in labeled:
        hard = hard - torch.log(torch.exp(s[i, labels[i]]) / torch.exp(s[i]).sum())
    hard = hard / len(labeled) if labeled else 0.0
    return alpha * tau**2 * soft / n + (1 - alpha) * hard


@pytest.mark.parametrize("tau,alpha", [(1.0, 1.0), (2.0, 0.7), (0.5, 0.0)])
def test_distill_loss_matches_formula(tau, alpha):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(7, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([2, -1, 0, -1, -1, 3, 1])
    fast = distill_loss(s, t, tau, alpha, labels)
    slow = naive_distill(s, t, tau, alpha, labels)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-6)
    torch.testing.assert_close(torch.autograd.grad(fast, s)[0], torch.autograd.grad(slow, s)[0])


def test_distill_gradient_vanishes_when_student_matches_teacher():
    t = torch.randn(5, 6, dtype=torch.float64)
    s = t.clone().requires_grad_()
    loss = distill_loss(s, t, temperature=2.0, alpha=1.0)
    (grad,) = torch.autograd.grad(loss, s)
    assert grad.abs().max().item() < 1e-12
    # and the loss is then the teacher's entropy, times tau^2
    p = F.softmax(t / 2.0, 1)
    assert loss.item() == pytest.approx(4.0 * -(p * p.log()).sum(1).mean().item())
    s2 = (t + torch.randn_like(t)).requires_grad_()
    (grad2,) = torch.autograd.grad(distill_loss(s2, t, 2.0, 1.0), s2)
    assert grad2.abs().max().item() > 1e-3


def test_distill_gradient_scale_does_not_depend_much_on_temperature():
    """Hinton et al.'s reason for tau^2: at high tau the soft term's gradient tends to
    (z_s - z_t) / (C * n) (zero-mean logits), whatever tau; without the factor it would shrink as 1/tau^2."""
    g = torch.Generator().manual_seed(4)
    t = torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = t - t.mean(1, keepdim=True)
    s = (t + 0.3 * torch.randn(6, 5, generator=g, dtype=torch.float64))
    s = (s - s.mean(1, keepdim=True)).requires_grad_()
    limit = (s.detach() - t) / (5 * 6)
    for tau in (200.0, 2000.0):
        (grad,) = torch.autograd.grad(distill_loss(s, t, tau, 1.0), s)
        torch.testing.assert_close(grad, limit, rtol=0, atol=1e-2 * limit.abs().max().item())


def test_distill_teacher_gets_no_gradient():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    distill_loss(s, t).backward()
    assert t.grad is None
    assert math.isfinite(s.grad.sum().item())
