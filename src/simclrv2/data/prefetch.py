"""Make the next batch's inputs on a background thread while the current batch trains.

On a CPU the batched augmentation (and a streamed batch's assembly) would otherwise run between
optimizer steps and add to every step's time; torch releases the GIL inside its ops, so a thread
can make batch ``k + 1``'s views while batch ``k``'s forward and backward run.

Exactly reproducible: batches are made one at a time, in the planned order, with the same random
generators, so the views are identical to making them in the loop. A batch made ahead but not used
(the run is interrupted) is undone by :meth:`Prefetcher.rewind`, which puts the generators back to
their state before it, so a checkpoint written then resumes as if nothing had been made ahead.

The code running on the thread is ``make`` itself: it must not import anything (import locks and
lazily imported modules race with the main thread).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """``prefetcher(idx) -> make(idx)`` for the index batches announced by :meth:`plan`, each made on
    a background thread while the previous one is in use (one batch ahead; a plan's first batch is
    made by its caller).

    ``generators``: every random generator ``make`` draws from (restored by :meth:`rewind`). A batch
    asked for out of the planned order is made in the calling thread, as without prefetching.
    ``threads``: torch intra-op threads of the background thread (its own OpenMP team; 1 by default,
    so that it fills the gaps the training step leaves rather than competing with the step's threads
    for every core); None leaves torch's setting.
    """

    def __init__(self, make: Callable[[Tensor], T], generators: Sequence[torch.Generator] = (),
                 threads: int | None = 1) -> None:
        self.make = make
        self.generators = list(generators)
        self.threads = threads
        self._planned: list[Tensor] = []
        self._next = 0
        self._pending: tuple[Tensor, list[Tensor], Future] | None = None
        self._pool: ThreadPoolExecutor | None = None

    def plan(self, batches: Sequence[Tensor]) -> None:
        """Make ``batches`` in this order (whatever was made ahead of an earlier plan is undone). The
        first is made by the first call, in the calling thread with all its torch threads: nothing
        would run beside it, and the first step of a run comes sooner."""
        self.rewind()
        self._planned, self._next = list(batches), 0

    def _submit(self) -> None:
        if self._next >= len(self._planned):
            return
        idx = self._planned[self._next]
        self._next += 1
        states = [g.get_state() for g in self.generators]
        if self._pool is None:
            self._pool = self._start_thread()
        self._pending = (idx, states, self._pool.submit(self.make, idx))

    def _start_thread(self) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(1, thread_name_prefix="simclrv2-prefetch")
        if self.threads is not None:
            main = torch.get_num_threads()
            # The count is per thread for OpenMP, but torch also keeps it as the default of threads started
            # later: set it on the new thread, then put the default back from this one.
            pool.submit(_set_threads, self.threads).result()
            torch.set_num_threads(main)
        return pool

    def __call__(self, idx: Tensor) -> T:
        if self._pending is not None and torch.equal(self._pending[0], idx):
            future = self._pending[2]
            self._pending = None
            out = future.result()  # an error raised while making the batch is raised here
        else:
            self.rewind()  # a batch made ahead for another index is undone (and the plan dropped)
            if self._next < len(self._planned) and torch.equal(self._planned[self._next], idx):
                self._next += 1  # the first batch of a plan
            else:
                self._planned, self._next = [], 0  # not planned: made here, nothing ahead
            out = self.make(idx)
        self._submit()
        return out

    def rewind(self) -> None:
        """Wait for the batch being made ahead, drop it and restore the generators to before it."""
        if self._pending is None:
            return
        _, states, future = self._pending
        self._pending = None
        future.exception()  # waits; an error of a batch nobody asked for is dropped with it
        for generator, state in zip(self.generators, states):
            generator.set_state(state)
        self._planned, self._next = [], 0

    def close(self) -> None:
        """Rewind and stop the thread."""
        self.rewind()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None



class Inline(Generic[T]):
    """The plain path with :class:`Prefetcher`'s interface: each batch made when it is asked for, on the
    calling thread, nothing ahead (for comparisons: the same views, without the background thread)."""

    def __init__(self, make: Callable[[Tensor], T], generators: Sequence[torch.Generator] = ()) -> None:
        self.make = make

    def plan(self, batches: Sequence[Tensor]) -> None:
        pass

    def __call__(self, idx: Tensor) -> T:
        return self.make(idx)

    def close(self) -> None:
        pass

def _set_threads(threads: int) -> None:
    """This thread's torch intra-op threads (torch initialises a thread's count lazily, from the
    process default, on first use: that happens first, so the count set here stays)."""
    torch.get_num_threads()
    torch.set_num_threads(threads)
