"""Per-stream bookkeeping: which pool slot holds each env's state, and stream-level limits."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArgument, ResourceExhausted
from .pool import StatePool

__all__ = ["StreamRegistry", "StreamState"]


@dataclass(eq=False)
class StreamState:
    """The envs of one open stream (env index -> pool slot), and since when it has been idle:
    waiting for its client's next message, with no request of its own in flight."""

    task: asyncio.Task[Any] | None
    last_active: float
    client: str
    slots: dict[int, int] = field(default_factory=dict)
    in_flight: bool = False
    expired: bool = False


class StreamRegistry:
    def __init__(
        self, pool: StatePool, *, max_streams: int, max_streams_per_client: int, max_envs_per_stream: int
    ) -> None:
        self.pool = pool
        self.max_streams = max_streams
        self.max_streams_per_client = max_streams_per_client
        self.max_envs_per_stream = max_envs_per_stream
        self._streams: set[StreamState] = set()
        self._per_client: Counter[str] = Counter()

    @property
    def live_streams(self) -> int:
        return len(self._streams)

    def open(self, client: str) -> StreamState:
        """Registers the calling handler's stream (its task is cancelled if it goes idle)."""
        if len(self._streams) >= self.max_streams:
            raise ResourceExhausted(
                f"{len(self._streams)} streams are open, the limit is {self.max_streams}; "
                "close idle streams or use more envs per stream"
            )
        if self._per_client[client] >= self.max_streams_per_client:
            raise ResourceExhausted(
                f"this client has {self._per_client[client]} streams open, the limit per client is "
                f"{self.max_streams_per_client}; use more envs per stream"
            )
        stream = StreamState(asyncio.current_task(), asyncio.get_running_loop().time(), client)
        self._streams.add(stream)
        self._per_client[client] += 1
        return stream

    def close(self, stream: StreamState) -> None:
        self.pool.release(list(stream.slots.values()))
        stream.slots.clear()
        if stream in self._streams:
            self._streams.discard(stream)
            self._per_client[stream.client] -= 1
            if not self._per_client[stream.client]:
                del self._per_client[stream.client]

    def expire_idle(self, idle_timeout: float) -> None:
        """Cancels the handlers of streams that sent nothing for `idle_timeout` seconds."""
        deadline = asyncio.get_running_loop().time() - idle_timeout
        for stream in self._streams:
            idle = not stream.in_flight and stream.last_active < deadline
            if idle and not stream.expired and stream.task is not None:
                stream.expired = True
                stream.task.cancel()

    @contextlib.contextmanager
    def busy(self, stream: StreamState) -> Iterator[None]:
        """Marks a request of `stream` in flight: time spent waiting for the model is not idle time."""
        stream.in_flight = True
        try:
            yield
        finally:
            stream.in_flight = False
            stream.last_active = asyncio.get_running_loop().time()

    def bind(self, stream: StreamState, env_ids: list[int]) -> list[int]:
        """Slots of `env_ids`, allocating for envs this stream has not seen; returns the new ids."""
        new = [e for e in dict.fromkeys(env_ids) if e not in stream.slots]
        if len(stream.slots) + len(new) > self.max_envs_per_stream:
            raise ResourceExhausted(
                f"stream would hold {len(stream.slots) + len(new)} envs, the limit is "
                f"{self.max_envs_per_stream}; release envs (release_env_ids) or open another stream"
            )
        for env_id, slot in zip(new, self.pool.allocate(len(new)), strict=True):
            stream.slots[env_id] = slot
        return new

    def slots_of(self, stream: StreamState, env_ids: list[int]) -> list[int]:
        unknown = [e for e in env_ids if e not in stream.slots]
        if unknown:
            raise InvalidArgument(f"env ids {unknown} have no state in this stream; step them first")
        return [stream.slots[e] for e in env_ids]

    def release(self, stream: StreamState, env_ids: list[int]) -> None:
        self.pool.release([stream.slots.pop(e) for e in env_ids if e in stream.slots])
