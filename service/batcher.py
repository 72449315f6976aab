"""Dynamic batching: every RPC's jobs meet in one queue and run on the model together.

The loop takes whatever is queued the moment the model is free (so a lone client never waits),
then tops the batch up for at most `max_queue_delay` while it is under `max_batch_size` frames.
Under load, requests pile up while the model runs, so batches grow by themselves. Jobs of calls
that were cancelled meanwhile are dropped before they reach the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from .engine import BatchEngine, Job, JobResult
from .errors import Internal, ResourceExhausted
from .metrics import Metrics

__all__ = ["BatchStats", "Batcher"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Pending:
    """One request's jobs: admitted, batched and answered together."""

    jobs: list[Job]
    result: asyncio.Future[list[JobResult]]
    queued_at: float

    @property
    def frame_count(self) -> int:
        return sum(job.frame_count for job in self.jobs)


@dataclass
class BatchStats:
    """Totals since start, over every protocol (they share the batcher); KServe's ModelStatistics
    reports them as Triton reports a model's."""

    batches: int = 0
    frames: int = 0
    dropped_cancelled: int = 0
    requests: int = 0  # answered by the model
    failed_requests: int = 0  # in batches the model failed on
    queue_ns: int = 0  # summed over requests: enqueued -> their batch started
    compute_ns: int = 0  # summed over requests: the duration of their batch
    last_batch_ms: int = 0  # wall clock (ms since the epoch) of the last batch's end

    def record(self, requests: int, queued_ns: int, batch_ns: int, *, failed: bool) -> None:
        if failed:
            self.failed_requests += requests
        else:
            self.requests += requests
        self.queue_ns += queued_ns
        self.compute_ns += batch_ns * requests
        self.last_batch_ms = time.time_ns() // 1_000_000


class Batcher:
    def __init__(
        self,
        engine: BatchEngine,
        *,
        max_batch_size: int,
        max_queue_delay: float,
        max_queued_jobs: int,
        metrics: Metrics,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue_delay < 0:
            raise ValueError(f"max_queue_delay must be >= 0, got {max_queue_delay}")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.max_queued_jobs = max_queued_jobs
        self.stats = BatchStats()
        self.metrics = metrics
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._carry: _Pending | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vidlstm-model")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="vidlstm-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def between_batches(self, work: Callable[[], T]) -> T:
        """Runs `work` on the model thread between two batches: the thread runs one thing at a time,
        so no batch sees half of what `work` changes (new weights, a state reset)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def submit(self, job: Job) -> JobResult:
        """Queues one job and waits for its result (see `submit_request`)."""
        return (await self.submit_request([job]))[0]

    async def submit_request(self, jobs: list[Job]) -> list[JobResult]:
        """Queues one request's jobs and waits for their results.

        The queue limit counts requests, not jobs: a request is admitted whole or refused whole
        (nothing queued), so a request that fits an idle server is always accepted.
        """
        waiting = self._queue.qsize() + (self._carry is not None)  # the carry waits for the next batch
        if waiting >= self.max_queued_jobs:
            raise ResourceExhausted(
                f"server busy: {waiting} requests queued (limit {self.max_queued_jobs}); retry with backoff"
            )
        future: asyncio.Future[list[JobResult]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(jobs, future, time.perf_counter()))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self.engine.pool.recycle_released()
            if not batch:
                continue
            jobs = [job for pending in batch for job in pending.jobs]
            started = time.perf_counter()
            waited = [started - p.queued_at for p in batch]
            try:
                results = await loop.run_in_executor(self._executor, self.engine.run, jobs)
            except Exception as error:  # a bug or device failure: fail these calls, keep serving
                log.exception("batch of %d jobs failed", len(jobs))
                self.stats.record(
                    len(batch), _ns(sum(waited)), _ns(time.perf_counter() - started), failed=True
                )
                for pending in batch:
                    if not pending.result.done():
                        pending.result.set_exception(
                            Internal(f"the model failed on this request's batch: {error}")
                        )
                continue
            duration = time.perf_counter() - started
            frames = sum(job.frame_count for job in jobs)
            self.stats.batches += 1
            self.stats.frames += frames
            self.stats.record(len(batch), _ns(sum(waited)), _ns(duration), failed=False)
            self.metrics.observe_batch(frames, waited, duration)
            offset = 0
            for pending in batch:
                if not pending.result.done():
                    pending.result.set_result(results[offset : offset + len(pending.jobs)])
                offset += len(pending.jobs)

    async def _collect(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        first = self._carry
        if first is None:
            with self.engine.pool.idle():
                first = await self._queue.get()
        self._carry = None
        deadline = asyncio.get_running_loop().time() + self.max_queue_delay
        item: _Pending | None = first
        while item is not None:
            if item.result.cancelled():
                self.stats.dropped_cancelled += 1
            elif batch and size + item.frame_count > self.max_batch_size:
                self._carry = item
                break
            else:
                batch.append(item)
                size += item.frame_count
            if size >= self.max_batch_size:
                break
            item = await self._next(deadline)
        return batch

    async def _next(self, deadline: float) -> _Pending | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return None
            try:
                return await asyncio.wait_for(self._queue.get(), remaining)
            except TimeoutError:
                return None


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)
