"""Recurrent state of every live env, preallocated on the model's device and indexed by slot.

Each state tensor is [.., capacity, ..] (slot = dimension 1, as in the model's state), so one
`index_select` gathers a batch's state and one `index_copy_` scatters it back: no per-step host
copies. Slots are handed out on the event loop; a released slot only becomes free again at the
next batch boundary (or at once while the batcher is idle, with nothing queued or running), so it
can never be reused inside a batch that still holds its old owner. A slot handed out holds whatever
its last owner left until its new owner's first job installs state: reading it before then raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from vidlstm.models import State, StateTensorSpec, WeightsVersion

from .errors import ResourceExhausted

__all__ = ["StatePool"]


class StatePool:
    def __init__(self, specs: list[StateTensorSpec], capacity: int, device: torch.device) -> None:
        if capacity < 1:
            raise ValueError(f"state capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.tensors: State = {
            s.name: torch.zeros(s.shape[0], capacity, *s.shape[1:], dtype=s.dtype, device=device)
            for s in specs
        }
        # Per slot, the weights version whose step made its state (None: zero or unknown, any version's).
        self.made_by: list[WeightsVersion | None] = [None] * capacity
        self._free = list(range(capacity - 1, -1, -1))
        self._released: list[int] = []
        self._uninstalled: set[int] = set()
        self._idle = False

    @property
    def live(self) -> int:
        """Slots held by envs, including ones released since the last batch boundary."""
        return self.capacity - len(self._free) - len(self._released)

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise ResourceExhausted(
                f"the server holds state for {self.live} envs and sequences and has room for "
                f"{len(self._free)} more; release envs, end sequences or raise --state-capacity "
                f"(now {self.capacity})"
            )
        slots = [self._free.pop() for _ in range(count)]
        self._uninstalled.update(slots)
        return slots

    def release(self, slots: list[int]) -> None:
        if self._idle:
            self._free.extend(slots)
        else:
            self._released.extend(slots)

    def recycle_released(self) -> None:
        """Called between batches: released slots become allocatable again."""
        self._free.extend(self._released)
        self._released.clear()

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """While the batcher waits with nothing queued or running, no job holds a slot, so released
        slots are free at once (an idle server never refuses for slots it does not use)."""
        self.recycle_released()
        self._idle = True
        try:
            yield
        finally:
            self._idle = False

    def installed(self, slots: list[int]) -> None:
        """Marks slots whose new owner's state has just been written."""
        self._uninstalled.difference_update(slots)

    def check_installed(self, slots: list[int]) -> None:
        """Refuses to read slots whose state was never installed: that is a previous owner's state."""
        stale = self._uninstalled.intersection(slots)
        if stale:
            raise RuntimeError(f"slots {sorted(stale)} read before their state was installed")

    def reset(self) -> None:
        """Every slot back to zero state (the start of an episode); on the model thread."""
        for tensor in self.tensors.values():
            tensor.zero_()
        self.made_by = [None] * self.capacity

    def gather(self, slots: torch.Tensor) -> State:
        return {name: tensor.index_select(1, slots) for name, tensor in self.tensors.items()}

    def scatter(self, slots: torch.Tensor, state: State) -> None:
        for name, tensor in self.tensors.items():
            tensor.index_copy_(1, slots, state[name].to(tensor.dtype))
