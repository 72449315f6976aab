"""How the served model looks to KServe v2 clients: its name, tensors, metadata and Triton config.

perf_analyzer and tritonclient read these to build requests: the input has fixed H, W, C (the model's
input size, so no `--shape` is needed; other sizes are resized like v1 raw frames), the batch
dimension is the first (`max_batch_size` > 0), and `sequence_batching` says state is kept per
sequence id.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidlstm import __version__
from vidlstm.kserve import grpc_service_pb2 as kpb
from vidlstm.kserve import model_config_pb2 as mpb
from vidlstm.models import InputSpec

from ..errors import NotFound

__all__ = ["EXTENSIONS", "MODEL_VERSION", "KServeModel"]

MODEL_VERSION = "1"  # one model, loaded at start: always version 1
EXTENSIONS = ("model_configuration", "sequence", "statistics")


@dataclass(frozen=True)
class KServeModel:
    name: str
    input_name: str
    output_name: str
    input_spec: InputSpec
    embedding_size: int
    max_batch_size: int  # frames in one request without a sequence id
    sequence_idle_timeout: float

    def serves(self, name: str, version: str) -> bool:
        return name == self.name and version in ("", MODEL_VERSION)

    def check(self, name: str, version: str) -> None:
        """Refuses requests for another model or version, as Triton does."""
        if name != self.name:
            raise NotFound(
                f"Request for unknown model: '{name}' is not found; this server serves '{self.name}' "
                "(setting kserve_model_name)"
            )
        if version not in ("", MODEL_VERSION):
            raise NotFound(f"model '{self.name}' has only version {MODEL_VERSION}, not '{version}'")

    @property
    def input_dims(self) -> list[int]:
        """[H, W, C] of one frame as the model takes it (the batch dimension comes first on the wire)."""
        spec = self.input_spec
        return [spec.height, spec.width, spec.channels]

    def server_metadata(self) -> kpb.ServerMetadataResponse:
        return kpb.ServerMetadataResponse(name="vidlstm", version=__version__, extensions=EXTENSIONS)

    def metadata(self) -> kpb.ModelMetadataResponse:
        tensor = kpb.ModelMetadataResponse.TensorMetadata
        return kpb.ModelMetadataResponse(
            name=self.name,
            versions=[MODEL_VERSION],
            platform="vidlstm",
            inputs=[tensor(name=self.input_name, datatype="UINT8", shape=[-1, *self.input_dims])],
            outputs=[tensor(name=self.output_name, datatype="FP32", shape=[-1, self.embedding_size])],
        )

    def config(self) -> mpb.ModelConfig:
        return mpb.ModelConfig(
            name=self.name,
            backend="vidlstm",
            max_batch_size=self.max_batch_size,
            input=[mpb.ModelInput(name=self.input_name, data_type=mpb.TYPE_UINT8, dims=self.input_dims)],
            output=[
                mpb.ModelOutput(name=self.output_name, data_type=mpb.TYPE_FP32, dims=[self.embedding_size])
            ],
            sequence_batching=mpb.ModelSequenceBatching(
                max_sequence_idle_microseconds=round(self.sequence_idle_timeout * 1e6),
                direct=mpb.ModelSequenceBatching.StrategyDirect(),
            ),
        )

    def index(self) -> kpb.RepositoryIndexResponse:
        entry = kpb.RepositoryIndexResponse.ModelIndex(name=self.name, version=MODEL_VERSION, state="READY")
        return kpb.RepositoryIndexResponse(models=[entry])
