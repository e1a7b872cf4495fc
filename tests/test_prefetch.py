"""Views made ahead on a thread (data/prefetch.py) are the views the loop would make itself."""

import torch

from simclrv2.config import build_config
from simclrv2.data.prefetch import Inline, Prefetcher
from simclrv2.data.ragged import RaggedImages
from simclrv2.data.views import ViewMaker
from simclrv2.train import pretrain


def _photos(n: int = 24) -> RaggedImages:
    g = torch.Generator().manual_seed(0)
    sizes = [(20 + (i * 7) % 13, 18 + (i * 5) % 17) for i in range(n)]
    return RaggedImages.stack([torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sizes], 16)


def _batches(n: int, b: int, seed: int = 1) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: n // b * b].view(-1, b))


def _maker(images):
    views = ViewMaker("simclr", 16, seed=5)
    return views, lambda idx: torch.cat([views(images.take(idx)), views(images.take(idx))])


def test_prefetched_views_equal_the_plain_ones():
    images, batches = _photos(), _batches(24, 6)
    _, plain = _maker(images)
    expected = [plain(idx) for idx in batches]
    views, make = _maker(images)
    ahead = Prefetcher(make, [views.generator])
    ahead.plan(batches)
    got = [ahead(idx) for idx in batches]
    ahead.close()
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_rewind_undoes_the_batch_made_ahead():
    """Interrupted after two batches: the generator is where the plain path leaves it, so a resumed
    run (a new plan) makes the same views as an uninterrupted one."""
    images, batches = _photos(), _batches(24, 6)
    _, plain = _maker(images)
    expected = [plain(idx) for idx in batches]
    views, make = _maker(images)
    ahead = Prefetcher(make, [views.generator])
    ahead.plan(batches)
    first = [ahead(idx) for idx in batches[:2]]
    ahead.rewind()  # batch 3 was being made: its draws are undone
    ahead.plan(batches[2:])
    rest = [ahead(idx) for idx in batches[2:]]
    ahead.close()
    assert all(torch.equal(a, b) for a, b in zip(first + rest, expected))


def test_an_unplanned_batch_is_made_in_place():
    images, batches = _photos(), _batches(24, 6)
    _, plain = _maker(images)
    expected = [plain(batches[0]), plain(batches[2])]
    views, make = _maker(images)
    ahead = Prefetcher(make, [views.generator])
    ahead.plan(batches)
    got = [ahead(batches[0]), ahead(batches[2])]  # batch 1 was made ahead, then skipped
    ahead.close()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_pretraining_with_prefetch_equals_pretraining_without(tmp_path, monkeypatch):
    cfg = build_config("digits", stage="pretrain", overrides=[
        "image_size=8", "width=0.125", "head_layers=2", "epochs=2", "batch_size=256", "knn_every=0", "device=cpu",
        "seed=3"])
    ahead = pretrain.run(cfg, tmp_path / "ahead", show_progress=False)
    monkeypatch.setattr(pretrain, "Prefetcher", Inline)
    inline = pretrain.run(cfg, tmp_path / "inline", show_progress=False)
    assert [r["loss"] for r in ahead["history"]] == [r["loss"] for r in inline["history"]]


def test_the_background_thread_has_its_own_thread_count():
    main = torch.get_num_threads()
    ahead = Prefetcher(lambda idx: torch.get_num_threads(), threads=main + 1)
    ahead.plan([torch.tensor([0]), torch.tensor([1])])
    assert ahead(torch.tensor([0])) == main  # a plan's first batch: made by the caller, nothing runs beside it
    assert ahead(torch.tensor([1])) == main + 1 and torch.get_num_threads() == main
    ahead.close()
