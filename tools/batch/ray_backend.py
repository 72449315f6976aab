"""`encode-video --ray` (a Ray instance started here) or `--ray-address ADDR` (a running cluster): the
plan's videos, one row each, through Ray Data's `map_batches` on a pool of `VideoEncoder` actors.

This process (the driver) alone plans, skips what is done and writes the manifest: only the videos
left to do become rows. Each actor writes its outputs atomically into `--out`, which must be a
folder every node sees at the same path, and returns a small record. A video whose worker dies
(killed, out of memory, crashed) is tried `TASK_RETRIES` more times on a restarted worker, then
Ray Data drops its row and it is recorded `failed`: it never loops. Needs `vidlstm[ray]`.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import ray

from vidlstm.clients import FrameSelection

from .backends import Finished, Progress
from .cores import usable_cores
from .decoders import DecodeOptions
from .plan import Task
from .ray_worker import ModelOptions, VideoEncoder, WorkerConfig
from .writer import OutputWriter

__all__ = ["TASK_RETRIES", "Encoding", "RayBackend", "RayOptions", "RayWorkerDiedError", "connect"]

log = logging.getLogger("vidlstm.tools.batch")

# Once more on a fresh worker (a node lost is not the video's fault), then the video fails.
TASK_RETRIES = 1


class RayWorkerDiedError(RuntimeError):
    """The worker encoding a video died on every try: the video fails instead of killing more."""


@dataclass(frozen=True)
class RayOptions:
    address: str | None  # None: start a Ray instance in this process
    min_workers: int
    max_workers: int | None  # None: as many as the cluster's CPUs (and GPUs) hold
    cpus_per_worker: float
    gpus_per_worker: float


@dataclass(frozen=True)
class Encoding:
    """What the driver knows of the model the workers load: for the plan's fingerprint."""

    weights_hash: str
    spec_json: str
    result_options: dict[str, Any]


class RayBackend:
    """Joins a cluster at construction, so one that refuses us is a usage error before any work; a
    Ray of its own (`--ray`) starts only when there is work: a rerun with everything done starts none."""

    actor: type[VideoEncoder] = VideoEncoder  # Ray Data's callable class (a test swaps in one that dies)

    def __init__(
        self, options: RayOptions, model: ModelOptions, encoding: Encoding, decode: DecodeOptions
    ) -> None:
        self.options = options
        self.model = model
        self.decode = decode
        self.weights_hash = encoding.weights_hash
        self.spec_json = encoding.spec_json
        self.result_options = encoding.result_options
        self._owned = connect(options) if options.address is not None else False

    def encode_all(
        self,
        tasks: list[Task],
        selection: FrameSelection,
        *,
        save_state: bool,
        progress: Progress,
        writer: OutputWriter,
    ) -> Iterator[Finished]:
        try:
            if tasks:
                if self.options.address is None:
                    self._owned = connect(self.options)
                decode = replace(self.decode, selection=selection)
                config = WorkerConfig(self.model, decode, save_state, writer)
                yield from self._finished(tasks, self._dataset(tasks, config).iter_rows(), progress)
        finally:
            if self._owned:
                ray.shutdown()

    def _dataset(self, tasks: list[Task], config: WorkerConfig) -> Any:
        rows = [{"key": key, "task": pickle.dumps(task)} for key, task in enumerate(tasks)]
        # One block per video: a block that fails (its worker died on every try) loses that video only.
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for the retry cap (the extra pins Ray below 2.64, which
            # drops `**ray_remote_args`): without it an actor task is retried forever.
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", DeprecationWarning)
            encoded = dataset.map_batches(
                self.actor,
                fn_constructor_kwargs={"config": config},
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(
                    min_size=min(self.options.min_workers, len(tasks)),
                    max_size=min(self._max_workers(), len(tasks)),
                ),
                num_cpus=self.options.cpus_per_worker,
                num_gpus=self.options.gpus_per_worker,
                max_restarts=-1,  # a dead worker is replaced...
                max_task_retries=TASK_RETRIES,  # ...but the video that was on it is not tried forever
            )
        encoded.context.max_errored_blocks = -1  # the run goes on past a lost video; found missing below
        encoded.context.enable_progress_bars = False  # the run has its own
        return encoded

    def _max_workers(self) -> int:
        """--workers' MAX, or as many workers as the cluster's CPUs (and GPUs) hold (>= min)."""
        if self.options.max_workers is not None:
            return self.options.max_workers
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        fits = int(resources.get("CPU", 1) // max(self.options.cpus_per_worker, 1e-9))
        if self.options.gpus_per_worker > 0:
            fits = min(fits, int(resources.get("GPU", 0) // self.options.gpus_per_worker))
        return max(fits, self.options.min_workers)

    def _finished(self, tasks: list[Task], rows: Iterator[Any], progress: Progress) -> Iterator[Finished]:
        """Each record as it comes; the videos with none at the end died with their workers."""
        left = dict(enumerate(tasks))
        lost: Exception = RayWorkerDiedError(
            f"the Ray worker encoding it died on each of its {TASK_RETRIES + 1} tries (killed, out of "
            "memory or crashed); see the Ray logs of this run"
        )
        try:
            for row in rows:
                task = left.pop(int(row["key"]))
                error = pickle.loads(row["error"]) if row["error"] else None
                progress(int(row["frames"]))
                yield Finished(task, None, error, float(row["seconds"]), int(row["frames"]))
        except Exception as error:  # the Ray run itself failed: what did not come back fails with it
            log.error("the Ray run stopped: %s", error)
            lost = RuntimeError(f"the Ray run stopped before this video came back: {error}")
        for task in left.values():
            yield Finished(task, None, lost, 0.0)


def connect(options: RayOptions) -> bool:
    """Starts or joins Ray; True when this call did (and so shuts it down after the run). An instance
    already running in this process (a Ray job's driver) is used as it is."""
    if ray.is_initialized():
        return False
    if options.address is None:
        # Ray 2.60 starts a local instance with token authentication (its token in ~/.ray/auth_token
        # unless RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH name one).
        for attempt in range(2):  # a busy machine can miss Ray's fixed wait for its own processes
            try:
                ray.init(
                    address="local", num_cpus=usable_cores(), include_dashboard=False, configure_logging=False
                )
                return True
            except Exception as error:
                if attempt or "time" not in str(error).lower():  # "timed out", "Timed out waiting for"
                    raise
                log.warning("starting Ray timed out (%s); trying once more", error)
                ray.shutdown()
        raise AssertionError("unreachable")
    try:
        ray.init(address=options.address, configure_logging=False)
    except (ConnectionError, ray.exceptions.AuthenticationError) as error:
        raise RuntimeError(
            f"cannot join the Ray cluster at {options.address}: {error}. Is it running there? A cluster "
            "with token authentication (RAY_AUTH_MODE=token; the default from Ray 2.61) needs its token: "
            "--ray-token-file FILE, or RAY_AUTH_TOKEN (`ray get-auth-token` on its head node prints it)"
        ) from None
    return True
