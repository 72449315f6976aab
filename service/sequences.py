"""Server-held sequences (Triton's sequence batcher semantics): one env's LSTM state per correlation id.

A sequence lives under a key of (client, sequence id), so no client can step or end another's. Its
requests take a place in line when they arrive (`line_up`, before any await) and run one at a time
in that order, also when several are in flight at once; whether the sequence exists is decided at
each request's turn, so a refused START leaves no sequence behind and the requests queued after it
are refused as for an unknown id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import ResourceExhausted
from .pool import StatePool

__all__ = ["SequenceId", "SequenceKey", "SequenceRegistry", "Ticket", "shown"]

SequenceId = int | str  # Triton's correlation id: an integer (int64 or uint64) or a string


def shown(sequence_id: SequenceId) -> str:
    """The id as error messages show it: long string ids cut short (a message is one header)."""
    text = repr(sequence_id)
    return text if len(text) <= 40 else f"{text[:37]}...'"


@dataclass(frozen=True)
class SequenceKey:
    """A sequence id as one client sees it (`client` None: auth is off, ids are global)."""

    client: str | None
    sequence_id: SequenceId


@dataclass(eq=False)
class _Sequence:
    slot: int | None = None  # the pool slot holding its state; None: not started (or ended)
    tail: asyncio.Future[None] | None = None  # done when the last request in line is done
    in_line: int = 0
    last_active: float = 0.0


@dataclass(eq=False)
class Ticket:
    """One request's place in its sequence's line."""

    key: SequenceKey
    sequence: _Sequence
    previous: asyncio.Future[None] | None
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    async def turn(self) -> None:
        """Waits until the requests that arrived before this one (same sequence) are done."""
        if self.previous is not None:
            await asyncio.shield(self.previous)

    @property
    def slot(self) -> int | None:
        return self.sequence.slot


class SequenceRegistry:
    def __init__(self, pool: StatePool, *, max_sequences_per_client: int) -> None:
        self.pool = pool
        self.max_sequences_per_client = max_sequences_per_client
        self._sequences: dict[SequenceKey, _Sequence] = {}
        self._started: Counter[str | None] = Counter()  # client -> sequences holding a slot

    @property
    def live_sequences(self) -> int:
        return sum(self._started.values())

    @contextlib.contextmanager
    def line_up(self, key: SequenceKey) -> Iterator[Ticket]:
        """A place in `key`'s line, taken now (call it before any await) and left when the block ends."""
        sequence = self._sequences.setdefault(key, _Sequence())
        ticket = Ticket(key, sequence, sequence.tail)
        sequence.tail = ticket.done
        sequence.in_line += 1
        try:
            yield ticket
        finally:
            if ticket.previous is None or ticket.previous.done():
                self._leave(ticket)
            else:  # cancelled while waiting: the next in line must still wait for the one before
                ticket.previous.add_done_callback(lambda _: self._leave(ticket))

    def _leave(self, ticket: Ticket) -> None:
        sequence = ticket.sequence
        ticket.done.set_result(None)
        sequence.in_line -= 1
        sequence.last_active = asyncio.get_running_loop().time()
        if sequence.tail is ticket.done:
            sequence.tail = None
        self._forget_if_unused(ticket.key, sequence)

    def start(self, ticket: Ticket) -> bool:
        """Gives the ticket's sequence a slot unless it holds one; True when the slot is new (its
        state must be installed before it is read)."""
        sequence = ticket.sequence
        if sequence.slot is not None:
            return False
        client = ticket.key.client
        if self._started[client] >= self.max_sequences_per_client:
            who = "this client has" if client else "all clients together have (auth is off: one count)"
            raise ResourceExhausted(
                f"{who} {self._started[client]} sequences open, the limit per client is "
                f"{self.max_sequences_per_client}; end sequences (sequence_end) before starting new ones"
            )
        sequence.slot = self.pool.allocate(1)[0]
        self._started[client] += 1
        return True

    def end(self, ticket: Ticket) -> None:
        """Releases the ticket's sequence's state; a later request must START it again."""
        self._release(ticket.key, ticket.sequence)

    def expire_idle(self, idle_timeout: float) -> None:
        """Ends sequences with no request in line for `idle_timeout` seconds."""
        deadline = asyncio.get_running_loop().time() - idle_timeout
        for key, sequence in list(self._sequences.items()):
            if not sequence.in_line and sequence.last_active < deadline:
                self._release(key, sequence)

    def _release(self, key: SequenceKey, sequence: _Sequence) -> None:
        if sequence.slot is not None:
            self.pool.release([sequence.slot])
            sequence.slot = None
            self._started[key.client] -= 1
            if not self._started[key.client]:
                del self._started[key.client]
        self._forget_if_unused(key, sequence)

    def _forget_if_unused(self, key: SequenceKey, sequence: _Sequence) -> None:
        if sequence.slot is None and not sequence.in_line and self._sequences.get(key) is sequence:
            del self._sequences[key]
