"""Runs one batch of jobs on the model: concat -> run once -> split.

A job is one request's work: frames of `n` envs over `T` steps, the pool slots holding their
state, optional state to install first and slots whose state to read back after. All jobs of a
batch share one CNN call; the LSTM steps once per distinct T. Everything here runs on the single
model thread, in batch order, so the pool needs no locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vidlstm.models import InferenceModel, State, StateTensorSpec, WeightsVersion

from .pool import StatePool
from .transfer import Transfers

__all__ = ["BatchEngine", "Job", "JobResult", "PerEnvState", "batch_of", "zero_state"]


PerEnvState = dict[str, np.ndarray]  # one env's state tensors, without the batch dimension


@dataclass(frozen=True)
class Job:
    """frames uint8 [T, n, C, H, W] (None for a state-only job) of the n envs in `slots`,
    episode_start bool [T, n]; state to install first, slots whose state to read back after.
    Built by the named constructors, never changed after."""

    frames: np.ndarray | None
    slots: list[int]
    episode_start: np.ndarray
    install_slots: list[int] = field(default_factory=list)
    install_state: dict[str, np.ndarray] = field(default_factory=dict)  # [.., m, ..] per name
    read_slots: list[int] = field(default_factory=list)
    # The weights that made installed states a client sent back (zero states: none, any version's).
    install_versions: dict[int, WeightsVersion] = field(default_factory=dict)

    @classmethod
    def sequence(
        cls,
        frames: np.ndarray,
        slot: int,
        episode_start: np.ndarray,
        initial_state: PerEnvState | None,
        *,
        read_back: bool = False,
    ) -> Job:
        """One env's frames [T, C, H, W] with episode_start [T], from `initial_state` (None: from the
        state its slot holds, as the next chunk of a video)."""
        installs = {} if initial_state is None else {slot: initial_state}
        reads = [slot] if read_back else []
        return cls.step(frames[:, None], [slot], episode_start[:, None], installs, reads)

    @classmethod
    def step(
        cls,
        frames: np.ndarray | None,
        slots: list[int],
        episode_start: np.ndarray,
        installs: dict[int, PerEnvState],
        read_slots: list[int],
        install_versions: dict[int, WeightsVersion] | None = None,
    ) -> Job:
        """Frames [T, n, C, H, W] (None: only install and read) of the envs in `slots`; `installs`
        maps slots to the state written before the step, `install_versions` slots to the weights
        that made a state a client sent."""
        install_state = batch_of(list(installs.values()))
        versions = dict(install_versions or {})
        return cls(frames, slots, episode_start, list(installs), install_state, read_slots, versions)

    @property
    def frame_count(self) -> int:
        return 0 if self.frames is None else self.frames.shape[0] * self.frames.shape[1]


def zero_state(specs: list[StateTensorSpec]) -> PerEnvState:
    """One env's state at the start of an episode."""
    return {s.name: np.zeros(s.shape, s.numpy_dtype) for s in specs}


def batch_of(states: list[PerEnvState]) -> dict[str, np.ndarray]:
    """Per-env states -> one state with the batch on dimension 1 (the pool's layout)."""
    if not states:
        return {}
    return {name: np.stack([state[name] for state in states], axis=1) for name in states[0]}


@dataclass
class JobResult:
    embeddings: np.ndarray | None  # float32 [T, n, D]
    states: dict[str, np.ndarray] | None  # [.., len(read_slots), ..] per name
    version: WeightsVersion  # the weights the whole batch ran on
    state_versions: list[WeightsVersion]  # per read slot: the weights that made its state


class BatchEngine:
    """Runs on the model thread. Per batch: state installs in one scatter, frames to the device in
    one copy, one CNN call (in chunks of `cnn_batch_size`: bounded activation memory), one LSTM
    call per distinct T, and everything read back in one device->host copy."""

    def __init__(self, model: InferenceModel, pool: StatePool, cnn_batch_size: int) -> None:
        self.model = model
        self.pool = pool
        self.cnn_batch_size = cnn_batch_size
        self.device = model.device
        self.transfers = Transfers(model.device)

    @torch.inference_mode()
    def run(self, jobs: list[Job]) -> list[JobResult]:
        version = self.model.version  # new weights are installed on this thread, between runs
        self._install([job for job in jobs if job.install_slots])
        for job in jobs:
            self.pool.check_installed(job.slots + job.read_slots)
        outputs = self._compute([j for j in jobs if j.frames is not None])
        readers = [job for job in jobs if job.read_slots]
        read = (
            self.pool.gather(self._index([s for job in readers for s in job.read_slots])) if readers else {}
        )
        host = self.transfers.to_host([*outputs.values(), *read.values()])
        embeddings = dict(zip(outputs, host[: len(outputs)], strict=True))
        states = dict(zip(read, host[len(outputs) :], strict=True))
        results, column = [], 0
        for job in jobs:
            job_states = None
            if job.read_slots:
                end = column + len(job.read_slots)
                job_states = {name: value[:, column:end] for name, value in states.items()}
                column = end
            made_by = [self.pool.made_by[slot] or version for slot in job.read_slots]
            results.append(JobResult(embeddings.get(id(job)), job_states, version, made_by))
        return results

    def _install(self, jobs: list[Job]) -> None:
        """Writes the state of every job's new or replaced envs, all in one scatter."""
        if not jobs:
            return
        slots = [slot for job in jobs for slot in job.install_slots]
        names = jobs[0].install_state
        joined = {name: np.concatenate([job.install_state[name] for job in jobs], axis=1) for name in names}
        self.pool.scatter(self._index(slots), self._to_device(joined))
        self.pool.installed(slots)
        for job in jobs:
            for slot in job.install_slots:
                self.pool.made_by[slot] = job.install_versions.get(slot)

    def _compute(self, jobs: list[Job]) -> dict[int, torch.Tensor]:
        """Embeddings [T, n, D] on the device, by id of the job."""
        if not jobs:
            return {}
        groups: dict[int, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.episode_start.shape[0], []).append(job)
        frames = self.transfers.frames_in(
            [[job.frames for job in members if job.frames is not None] for members in groups.values()]
        )
        stacked_parts, plans = [], []
        for group_frames, members in zip(frames, groups.values(), strict=True):
            slots = self._index([s for job in members for s in job.slots])
            starts = torch.from_numpy(np.concatenate([job.episode_start for job in members], axis=1))
            starts = starts.to(self.device)
            state = self.pool.gather(slots)
            stacked, history = self.model.stack(group_frames, state, starts)
            stacked_parts.append(stacked.flatten(0, 1))
            plans.append((members, slots, starts, state, history))
        features = self._features(torch.cat(stacked_parts))
        results: dict[int, torch.Tensor] = {}
        offset = 0
        for members, slots, starts, state, history in plans:
            steps, batch = starts.shape
            group_features = features[offset : offset + steps * batch].view(steps, batch, -1)
            offset += steps * batch
            outputs, new_state = self.model.recur(group_features, state, starts, history)
            self.pool.scatter(slots, new_state)
            for job in members:
                for slot in job.slots:
                    self.pool.made_by[slot] = self.model.version
            column = 0
            for job in members:
                results[id(job)] = outputs[:, column : column + len(job.slots)]
                column += len(job.slots)
        return results

    def _features(self, frames: torch.Tensor) -> torch.Tensor:
        """The CNN over [N, kC, H, W] in chunks of `cnn_batch_size` (bounded activation memory)."""
        if frames.shape[0] <= self.cnn_batch_size:
            return self.model.features(frames)
        return torch.cat([self.model.features(chunk) for chunk in torch.split(frames, self.cnn_batch_size)])

    def _index(self, slots: list[int]) -> torch.Tensor:
        return torch.tensor(slots, dtype=torch.long, device=self.device)

    def _to_device(self, state: dict[str, np.ndarray]) -> State:
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in state.items()}
