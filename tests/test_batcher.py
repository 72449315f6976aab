"""The batcher when the model itself fails: each call of the failed batch gets INTERNAL with the
reason, and the batcher goes on serving the next batches."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from vidlstm.models import InferenceModel
from vidlstm.service.batcher import Batcher
from vidlstm.service.engine import BatchEngine, Job, JobResult
from vidlstm.service.errors import Internal
from vidlstm.service.metrics import Metrics
from vidlstm.service.pool import StatePool


class FlakyEngine(BatchEngine):
    """The real engine, except that its first batch fails as a device error would."""

    failed = False

    def run(self, jobs: list[Job]) -> list[JobResult]:
        if not self.failed:
            self.failed = True
            raise RuntimeError("CUDA error: device lost")
        return super().run(jobs)


def test_a_failed_batch_is_internal_and_the_next_one_is_served(model: InferenceModel) -> None:
    pool = StatePool(model.state_specs, 4, torch.device("cpu"))
    engine = FlakyEngine(model, pool, cnn_batch_size=8)
    frames = np.zeros((1, 1, 1, 84, 84), np.uint8)

    async def scenario() -> JobResult:
        batcher = Batcher(engine, max_batch_size=8, max_queue_delay=0, max_queued_jobs=4, metrics=Metrics())
        batcher.start()
        try:
            slots = pool.allocate(1)
            job = Job.sequence(
                frames[:, 0],
                slots[0],
                np.zeros(1, bool),
                {s.name: np.zeros(s.shape, s.numpy_dtype) for s in model.state_specs},
            )
            with pytest.raises(
                Internal, match="the model failed on this request's batch: CUDA error: device lost"
            ):
                await batcher.submit(job)
            return await batcher.submit(job)
        finally:
            await batcher.stop()

    result = asyncio.run(scenario())
    assert result.embeddings is not None
    assert result.embeddings.shape == (1, 1, 256)
