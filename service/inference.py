"""The inference core: what every protocol front-end needs, in numpy and protocol-free.

Stateless encoding of sequences (state in, state out), stream sessions (open, step envs with resets,
set and read back state, release, close, idle expiry), server-held sequences stepped one frame at a
time (Triton's sequence batcher), video, the decode pool and the limits. Every
check a request can fail is made before anything changes, and every refusal is a `ServiceError`:
a front-end converts its messages into these calls and back, and maps errors to its status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from vidlstm.models import InferenceModel, InputSpec, StateTensorSpec, WeightsVersion
from vidlstm.v1 import encoder_pb2 as pb

from .batcher import Batcher
from .convert import ResponseBudget
from .engine import Job, PerEnvState, zero_state
from .errors import InvalidArgument
from .live_weights import LiveWeights
from .sequences import SequenceRegistry, Ticket, shown
from .streams import StreamRegistry, StreamState
from .versions import VersionHistory
from .video import VideoLimits, VideoService

__all__ = ["InferenceCore", "SequenceInput", "SequenceOutput", "StepInput", "StepOutput"]

T = TypeVar("T")


@dataclass(frozen=True)
class SequenceInput:
    """One env's frames, model input uint8 [T, C, H, W], with episode_start bool [T]; from
    `initial_state` (None: zeros)."""

    frames: np.ndarray
    episode_start: np.ndarray
    initial_state: PerEnvState | None = None


@dataclass(frozen=True)
class SequenceOutput:
    embeddings: np.ndarray  # float32 [T, D]
    final_state: PerEnvState | None  # when asked for
    version: WeightsVersion  # the weights it ran on (one version for all sequences of a call)


@dataclass(frozen=True)
class StepInput:
    """One message of a session: frames [n, C, H, W] (None: only state work) of `env_ids`, their
    episode starts [n]; states installed first (and the versions that made them); states read back
    after; envs released after."""

    frames: np.ndarray | None
    env_ids: list[int]
    episode_start: np.ndarray
    set_states: dict[int, PerEnvState]
    return_state_env_ids: list[int]
    release_env_ids: list[int]
    set_state_versions: dict[int, WeightsVersion] = field(default_factory=dict)


@dataclass(frozen=True)
class StepOutput:
    embeddings: np.ndarray | None  # float32 [n, D], in `env_ids` order
    states: dict[int, PerEnvState]  # env id -> state after the step, as asked for
    version: WeightsVersion  # the weights it ran on
    state_versions: dict[int, WeightsVersion]  # env id -> the weights that made its state


class InferenceCore:
    def __init__(
        self,
        model: InferenceModel,
        batcher: Batcher,
        streams: StreamRegistry,
        sequences: SequenceRegistry,
        weights: LiveWeights,
        *,
        video: VideoLimits,
        stream_idle_timeout: float,
        sequence_idle_timeout: float,
        max_message_bytes: int,
    ) -> None:
        self.model = model
        self.batcher = batcher
        self.streams = streams
        self.sequences = sequences
        self.weights = weights
        self.history: VersionHistory = weights.history
        self.stream_idle_timeout = stream_idle_timeout
        self.sequence_idle_timeout = sequence_idle_timeout
        self.state_specs: list[StateTensorSpec] = model.state_specs
        self.input_spec: InputSpec = model.model.spec.input
        self.responses = ResponseBudget(
            max_message_bytes,
            model.model.out_size,
            sum(math.prod(s.shape) * s.numpy_dtype.itemsize for s in self.state_specs),
        )
        self._decoders = ThreadPoolExecutor(2, thread_name_prefix="vidlstm-decode")
        self.video = VideoService(model, batcher, streams.pool, video)  # its own decode pool
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the reaper of idle streams and sequences; call from the server's event loop."""
        self._reaper = asyncio.get_running_loop().create_task(self._expire_idle())

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        self._decoders.shutdown(wait=False, cancel_futures=True)
        self.video.close()

    @property
    def live_envs(self) -> int:
        """Envs whose state the server holds (streams and in-flight Encode calls)."""
        return self.streams.pool.live

    @property
    def live_streams(self) -> int:
        return self.streams.live_streams

    async def offload(self, work: Callable[..., T], *args: object) -> T:
        """Runs CPU-heavy input work (decoding, resizing) in the decode pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._decoders, work, *args)

    def zero_state(self) -> PerEnvState:
        """The state at the start of an episode."""
        return zero_state(self.state_specs)

    # -- stateless -------------------------------------------------------------------------------

    async def encode(
        self, sequences: list[SequenceInput], *, return_state: bool, dtype: pb.DType
    ) -> list[SequenceOutput]:
        """Independent sequences in one request; each holds a state slot while it runs."""
        capacity = self.streams.pool.capacity
        if len(sequences) > capacity:
            raise InvalidArgument(
                f"{len(sequences)} sequences in one call; each holds one of the server's "
                f"{capacity} state slots (--state-capacity) while it runs: split the call"
            )
        frames = sum(len(s.frames) for s in sequences)
        self.responses.check(
            frames, dtype, len(sequences) if return_state else 0, "send fewer frames per call"
        )
        slots = self.streams.pool.allocate(len(sequences))
        try:
            jobs = [
                Job.sequence(
                    s.frames,
                    slot,
                    s.episode_start,
                    s.initial_state or self.zero_state(),
                    read_back=return_state,
                )
                for s, slot in zip(sequences, slots, strict=True)
            ]
            results = await self.batcher.submit_request(jobs)
        finally:
            self.streams.pool.release(slots)
        outputs = []
        for result in results:
            assert result.embeddings is not None
            final = None if result.states is None else {k: v[:, 0] for k, v in result.states.items()}
            outputs.append(SequenceOutput(result.embeddings[:, 0], final, result.version))
        return outputs

    # -- sessions --------------------------------------------------------------------------------

    def open_session(self, client: str) -> StreamState:
        """A session of the calling task (cancelled if it goes idle); counts against `client`'s limit."""
        return self.streams.open(client)

    def close_session(self, session: StreamState) -> None:
        """Drops the session and the state of all its envs."""
        self.streams.close(session)

    def serving(self, session: StreamState) -> contextlib.AbstractContextManager[None]:
        """Around each request of a session: the time it spends waiting for the model is not idle."""
        return self.streams.busy(session)

    async def step(self, session: StreamState, step: StepInput, dtype: pb.DType) -> StepOutput:
        """Checks the step completely, then binds its new envs and runs it; a refused step (here or
        by the batcher) changes nothing."""
        self._check_step(session, step, dtype)
        new_envs = self.streams.bind(session, step.env_ids + list(step.set_states))
        installs = dict(step.set_states)
        for env in new_envs:
            installs.setdefault(env, self.zero_state())
        install_slots = dict(zip(installs, self.streams.slots_of(session, list(installs)), strict=True))
        job = Job.step(
            None if step.frames is None else step.frames[None],
            self.streams.slots_of(session, step.env_ids),
            step.episode_start[None],
            {install_slots[env]: state for env, state in installs.items()},
            self.streams.slots_of(session, step.return_state_env_ids),
            {install_slots[env]: made_by for env, made_by in step.set_state_versions.items()},
        )
        try:
            result = await self.batcher.submit(job)
        except BaseException:
            # Never reached the model: the envs it bound would hold slots with no state installed.
            self.streams.release(session, new_envs)
            raise
        self.streams.release(session, step.release_env_ids)
        states, versions = {}, {}
        if result.states is not None:
            for column, env_id in enumerate(step.return_state_env_ids):
                states[env_id] = {k: v[:, column] for k, v in result.states.items()}
                versions[env_id] = result.state_versions[column]
        embeddings = None if result.embeddings is None else result.embeddings[0]
        return StepOutput(embeddings, states, result.version, versions)

    # -- server-held sequences -------------------------------------------------------------------

    async def sequence_step(
        self, ticket: Ticket, frame: np.ndarray, *, start: bool, end: bool
    ) -> SequenceOutput:
        """One frame [1, C, H, W] of the ticket's sequence, at its turn in line -> embedding float32 [1, D].

        START zeroes the state (of a new sequence, or restarts a running one), END releases it after
        the step; a refused request changes nothing, so a refused START leaves no sequence."""
        await ticket.turn()
        if not start and ticket.slot is None:
            raise InvalidArgument(
                f"inference request for sequence {shown(ticket.key.sequence_id)} must specify the START flag "
                "on the first request of the sequence (it was never started, has ended, or was idle "
                f"for more than {self.sequence_idle_timeout:g} s)"
            )
        new = self.sequences.start(ticket)
        slot = ticket.slot
        assert slot is not None
        installs = {slot: self.zero_state()} if new else {}
        job = Job.step(frame[None], [slot], np.array([[start]]), installs, [])
        try:
            result = await self.batcher.submit(job)
        except BaseException:
            if new:  # never reached the model: the sequence was not started
                self.sequences.end(ticket)
            raise
        if end:
            self.sequences.end(ticket)
        assert result.embeddings is not None
        return SequenceOutput(result.embeddings[:, 0], None, result.version)

    def _check_step(self, session: StreamState, step: StepInput, dtype: pb.DType) -> None:
        if step.frames is not None and len(step.env_ids) != len(step.frames):
            raise InvalidArgument(
                f"{len(step.frames)} frames but {len(step.env_ids)} env_ids; send one id per frame"
            )
        if step.frames is None and step.env_ids:
            raise InvalidArgument("env_ids without frames; send frames or leave env_ids empty")
        if len(set(step.env_ids)) != len(step.env_ids):
            raise InvalidArgument(f"env_ids must be unique within a request, got {step.env_ids}")
        known = set(session.slots) | set(step.env_ids) | set(step.set_states)
        missing = [e for e in step.return_state_env_ids if e not in known]
        if missing:
            raise InvalidArgument(f"return_state_env_ids {missing} name envs this stream has not stepped")
        if len(set(step.return_state_env_ids)) != len(step.return_state_env_ids):
            raise InvalidArgument("return_state_env_ids must be unique")
        self.responses.check(
            len(step.env_ids), dtype, len(step.return_state_env_ids), "step or read fewer envs per message"
        )

    async def _expire_idle(self) -> None:
        """Runs for the server's life: closes streams idle past `stream_idle_timeout` and ends
        sequences idle past `sequence_idle_timeout`."""
        period = min(1.0, self.stream_idle_timeout / 4, self.sequence_idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            self.streams.expire_idle(self.stream_idle_timeout)
            self.sequences.expire_idle(self.sequence_idle_timeout)
