"""Triton's per-model statistics (the `statistics` extension), what perf_analyzer reads around each
measurement window, from the batcher's totals: the model's, over both protocols, as Triton counts a
model's requests over HTTP and gRPC alike. Success time is queue + compute; input conversion and
output are not split out: compute_input and compute_output count the requests with 0 ns (perf_analyzer
needs the three compute counts equal)."""

from __future__ import annotations

from vidlstm.kserve import grpc_service_pb2 as kpb

from ..batcher import BatchStats
from .model import MODEL_VERSION

__all__ = ["model_statistics"]


def model_statistics(name: str, stats: BatchStats, failed: int) -> kpb.ModelStatistics:
    """`failed`: KServe requests that failed, refused ones (malformed, over a limit) included."""
    duration = kpb.StatisticDuration
    return kpb.ModelStatistics(
        name=name,
        version=MODEL_VERSION,
        last_inference=stats.last_batch_ms,
        inference_count=stats.frames,
        execution_count=stats.batches,
        inference_stats=kpb.InferStatistics(
            success=duration(count=stats.requests, ns=stats.queue_ns + stats.compute_ns),
            fail=duration(count=failed),
            queue=duration(count=stats.requests + stats.failed_requests, ns=stats.queue_ns),
            compute_input=duration(count=stats.requests),
            compute_infer=duration(count=stats.requests, ns=stats.compute_ns),
            compute_output=duration(count=stats.requests),
        ),
    )
