"""Live weights: a push, or a replaced watched file, becomes the weights serving between two batches.

Staging (parse, check against the served model, copy to its device) runs in a worker thread, off the
event loop and off the model thread, which keeps serving; the install (one copy per tensor, and a
state reset when asked) then runs on the model thread between two batches. One install at a time;
a failed one leaves the weights serving as they were and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from vidlstm.models import (
    ArchitectureMismatchError,
    InferenceModel,
    StagedWeights,
    WeightsError,
    WeightsVersion,
)

from .batcher import Batcher
from .errors import FailedPrecondition, Internal, InvalidArgument, ServiceError
from .metrics import Metrics
from .pool import StatePool
from .versions import VersionHistory

__all__ = ["Installed", "LiveWeights"]

log = logging.getLogger(__name__)
WATCH_INTERVAL_S = 0.2


@dataclass(frozen=True)
class Installed:
    version: WeightsVersion
    install_seconds: float  # from the upload's last byte (or the file read) to serving


class LiveWeights:
    """Installs new weights into a serving model; `history` learns each version as it is installed."""

    def __init__(
        self,
        model: InferenceModel,
        batcher: Batcher,
        pool: StatePool,
        history: VersionHistory,
        metrics: Metrics,
        *,
        reset_state: bool,
    ) -> None:
        self.model = model
        self.batcher = batcher
        self.pool = pool
        self.history = history
        self.metrics = metrics
        self.reset_state = reset_state
        self._one_at_a_time = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None

    def start_watching(self, path: Path, *, skip_first: bool) -> None:
        """Watches `path` for the server's life (see `watch`); call from the server's event loop."""
        self._watcher = asyncio.get_running_loop().create_task(self.watch(path, skip_first=skip_first))

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    async def install(
        self, data: bytes, *, learner_step: int | None, sha256: str = "", received_at: float, source: str
    ) -> Installed:
        """Checks `data` (a .safetensors file; its hex `sha256`, if given) and installs it:
        FAILED_PRECONDITION for weights of another architecture or input, INVALID_ARGUMENT for bytes
        that are not usable weights."""
        async with self._one_at_a_time:
            try:
                staged = await asyncio.to_thread(self._stage, data, learner_step, sha256)
            except ArchitectureMismatchError as error:
                raise self.refuse(source, FailedPrecondition(str(error))) from None
            except WeightsError as error:
                raise self.refuse(source, InvalidArgument(str(error))) from None
            except Exception as error:  # e.g. out of device memory: the old weights stay, say why
                log.exception("staging weights from %s failed", source)
                raise self.refuse(source, Internal(f"could not stage the weights: {error}")) from None
            staged_at = time.perf_counter()
            version, copy_started, copied_at = await self.batcher.between_batches(
                partial(self._install, staged)
            )
        seconds = copied_at - received_at
        self.metrics.weight_installs.inc()
        self.metrics.weight_install_seconds.observe(seconds)
        log.info(
            "weights version %d serving (weights %s, learner step %s, from %s): %.1f ms from the last "
            "byte to serving (staged %.1f, waited %.1f for the batch running, copied %.1f)%s",
            version.number,
            version.weights_hash[:12],
            "-" if version.learner_step is None else version.learner_step,
            source,
            seconds * 1000,
            (staged_at - received_at) * 1000,
            (copy_started - staged_at) * 1000,
            (copied_at - copy_started) * 1000,
            "; every episode's state reset" if self.reset_state else "",
        )
        return Installed(version, seconds)

    def _stage(self, data: bytes, learner_step: int | None, sha256: str) -> StagedWeights:
        """In a worker thread: off the event loop (the streams' steps) and the model thread."""
        if sha256 and (actual := hashlib.sha256(data).hexdigest()) != sha256:
            raise WeightsError(
                f"the upload's sha256 is {actual}, the first message says {sha256}: the file changed or "
                "was damaged on the way; nothing was installed"
            )
        return self.model.stage_weights(data, learner_step)

    def _install(self, staged: StagedWeights) -> tuple[WeightsVersion, float, float]:
        """On the model thread, between two batches; returns the version and when the copy started
        and ended (the next batch runs on the new weights from then on)."""
        started = time.perf_counter()
        version = self.model.install_weights(staged)
        if self.reset_state:
            self.pool.reset()
        self.history.record(version)
        return version, started, time.perf_counter()

    def refuse(self, source: str, error: ServiceError) -> ServiceError:
        """Logs and counts weights refused from `source`; returns the error to raise."""
        self.metrics.weight_install_failures.inc()
        log.warning(
            "weights from %s refused, version %d keeps serving: %s", source, self.model.version.number, error
        )
        return error

    async def watch(self, path: Path, *, skip_first: bool) -> None:
        """Runs for the server's life: installs the file at `path` each time it is replaced (written
        beside it, then renamed over it) or changes; `skip_first`: the file there at start is the one
        already serving."""
        seen: tuple[int, ...] | None = None
        unreadable = ""  # the last error reading the file, logged once until it changes
        while True:
            try:
                identity, data = await asyncio.to_thread(_read_if_changed, path, seen)
                unreadable = ""
            except OSError as error:
                if str(error) != unreadable:  # once per new error, not at every poll
                    self.refuse(str(path), InvalidArgument(f"cannot read the watched file: {error}"))
                unreadable, identity, data = str(error), seen, None
            if data is not None and not skip_first:
                with contextlib.suppress(ServiceError):  # logged and counted; the next change is tried
                    await self.install(
                        data, learner_step=None, received_at=time.perf_counter(), source=str(path)
                    )
            seen, skip_first = identity, False
            await asyncio.sleep(WATCH_INTERVAL_S)


def _read_if_changed(path: Path, seen: tuple[int, ...] | None) -> tuple[tuple[int, ...] | None, bytes | None]:
    """The file's identity and, when it differs from `seen`, its bytes (identity and bytes of the
    same open file, so a rename in between cannot pair one file's bytes with another's identity)."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below, after fstat and read
    except FileNotFoundError:
        return None, None
    with file:
        stat = os.fstat(file.fileno())
        identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        return identity, (None if identity == seen else file.read())
