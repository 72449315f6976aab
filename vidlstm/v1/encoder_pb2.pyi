from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    UINT8: _ClassVar[DType]

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    RGB: _ClassVar[PixelFormat]
    BGR: _ClassVar[PixelFormat]
    GRAY: _ClassVar[PixelFormat]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType
UINT8: DType
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
RGB: PixelFormat
BGR: PixelFormat
GRAY: PixelFormat

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RawFrames(_message.Message):
    __slots__ = ("shape", "pixel_format", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    PIXEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    pixel_format: PixelFormat
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., pixel_format: _Optional[_Union[PixelFormat, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class EncodedFrames(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Frames(_message.Message):
    __slots__ = ("raw", "encoded")
    RAW_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    raw: RawFrames
    encoded: EncodedFrames
    def __init__(self, raw: _Optional[_Union[RawFrames, _Mapping]] = ..., encoded: _Optional[_Union[EncodedFrames, _Mapping]] = ...) -> None: ...

class State(_message.Message):
    __slots__ = ("weights_hash", "tensors", "lineage", "version")
    class TensorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    WEIGHTS_HASH_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    weights_hash: str
    tensors: _containers.MessageMap[str, Tensor]
    lineage: str
    version: int
    def __init__(self, weights_hash: _Optional[str] = ..., tensors: _Optional[_Mapping[str, Tensor]] = ..., lineage: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class WeightsVersion(_message.Message):
    __slots__ = ("version", "weights_hash", "learner_step")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_HASH_FIELD_NUMBER: _ClassVar[int]
    LEARNER_STEP_FIELD_NUMBER: _ClassVar[int]
    version: int
    weights_hash: str
    learner_step: int
    def __init__(self, version: _Optional[int] = ..., weights_hash: _Optional[str] = ..., learner_step: _Optional[int] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StateTensorInfo(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "spec_json", "pixel_formats", "input_height", "input_width", "input_channels", "frame_stack", "embedding_size", "state", "weights_hash", "device", "max_batch_size", "precision", "compiled", "weights", "lineage", "state_version_window", "accepts_weights")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    PIXEL_FORMATS_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    FRAME_STACK_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SIZE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_HASH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    COMPILED_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_WINDOW_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec_json: str
    pixel_formats: _containers.RepeatedScalarFieldContainer[PixelFormat]
    input_height: int
    input_width: int
    input_channels: int
    frame_stack: int
    embedding_size: int
    state: _containers.RepeatedCompositeFieldContainer[StateTensorInfo]
    weights_hash: str
    device: str
    max_batch_size: int
    precision: str
    compiled: bool
    weights: WeightsVersion
    lineage: str
    state_version_window: int
    accepts_weights: bool
    def __init__(self, name: _Optional[str] = ..., spec_json: _Optional[str] = ..., pixel_formats: _Optional[_Iterable[_Union[PixelFormat, str]]] = ..., input_height: _Optional[int] = ..., input_width: _Optional[int] = ..., input_channels: _Optional[int] = ..., frame_stack: _Optional[int] = ..., embedding_size: _Optional[int] = ..., state: _Optional[_Iterable[_Union[StateTensorInfo, _Mapping]]] = ..., weights_hash: _Optional[str] = ..., device: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., precision: _Optional[str] = ..., compiled: _Optional[bool] = ..., weights: _Optional[_Union[WeightsVersion, _Mapping]] = ..., lineage: _Optional[str] = ..., state_version_window: _Optional[int] = ..., accepts_weights: _Optional[bool] = ...) -> None: ...

class Sequence(_message.Message):
    __slots__ = ("frames", "episode_start", "initial_state")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    EPISODE_START_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    frames: Frames
    episode_start: _containers.RepeatedScalarFieldContainer[bool]
    initial_state: State
    def __init__(self, frames: _Optional[_Union[Frames, _Mapping]] = ..., episode_start: _Optional[_Iterable[bool]] = ..., initial_state: _Optional[_Union[State, _Mapping]] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("sequences", "embedding_dtype", "return_state")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DTYPE_FIELD_NUMBER: _ClassVar[int]
    RETURN_STATE_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[Sequence]
    embedding_dtype: DType
    return_state: bool
    def __init__(self, sequences: _Optional[_Iterable[_Union[Sequence, _Mapping]]] = ..., embedding_dtype: _Optional[_Union[DType, str]] = ..., return_state: _Optional[bool] = ...) -> None: ...

class SequenceResult(_message.Message):
    __slots__ = ("embeddings", "final_state")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    FINAL_STATE_FIELD_NUMBER: _ClassVar[int]
    embeddings: Tensor
    final_state: State
    def __init__(self, embeddings: _Optional[_Union[Tensor, _Mapping]] = ..., final_state: _Optional[_Union[State, _Mapping]] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("results", "weights")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SequenceResult]
    weights: WeightsVersion
    def __init__(self, results: _Optional[_Iterable[_Union[SequenceResult, _Mapping]]] = ..., weights: _Optional[_Union[WeightsVersion, _Mapping]] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("frames", "env_ids", "episode_start", "set_states", "return_state_env_ids", "release_env_ids", "embedding_dtype", "request_id")
    class SetStatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: State
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[State, _Mapping]] = ...) -> None: ...
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ENV_IDS_FIELD_NUMBER: _ClassVar[int]
    EPISODE_START_FIELD_NUMBER: _ClassVar[int]
    SET_STATES_FIELD_NUMBER: _ClassVar[int]
    RETURN_STATE_ENV_IDS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ENV_IDS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DTYPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    frames: Frames
    env_ids: _containers.RepeatedScalarFieldContainer[int]
    episode_start: _containers.RepeatedScalarFieldContainer[bool]
    set_states: _containers.MessageMap[int, State]
    return_state_env_ids: _containers.RepeatedScalarFieldContainer[int]
    release_env_ids: _containers.RepeatedScalarFieldContainer[int]
    embedding_dtype: DType
    request_id: int
    def __init__(self, frames: _Optional[_Union[Frames, _Mapping]] = ..., env_ids: _Optional[_Iterable[int]] = ..., episode_start: _Optional[_Iterable[bool]] = ..., set_states: _Optional[_Mapping[int, State]] = ..., return_state_env_ids: _Optional[_Iterable[int]] = ..., release_env_ids: _Optional[_Iterable[int]] = ..., embedding_dtype: _Optional[_Union[DType, str]] = ..., request_id: _Optional[int] = ...) -> None: ...

class RequestError(_message.Message):
    __slots__ = ("code", "message", "field")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    field: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("embeddings", "env_ids", "states", "error", "request_id", "weights")
    class StatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: State
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[State, _Mapping]] = ...) -> None: ...
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    ENV_IDS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    embeddings: Tensor
    env_ids: _containers.RepeatedScalarFieldContainer[int]
    states: _containers.MessageMap[int, State]
    error: RequestError
    request_id: int
    weights: WeightsVersion
    def __init__(self, embeddings: _Optional[_Union[Tensor, _Mapping]] = ..., env_ids: _Optional[_Iterable[int]] = ..., states: _Optional[_Mapping[int, State]] = ..., error: _Optional[_Union[RequestError, _Mapping]] = ..., request_id: _Optional[int] = ..., weights: _Optional[_Union[WeightsVersion, _Mapping]] = ...) -> None: ...

class VideoOptions(_message.Message):
    __slots__ = ("every", "fps", "start_s", "end_s", "max_frames", "embedding_dtype", "return_state", "chunk_frames")
    EVERY_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DTYPE_FIELD_NUMBER: _ClassVar[int]
    RETURN_STATE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FRAMES_FIELD_NUMBER: _ClassVar[int]
    every: int
    fps: float
    start_s: float
    end_s: float
    max_frames: int
    embedding_dtype: DType
    return_state: bool
    chunk_frames: int
    def __init__(self, every: _Optional[int] = ..., fps: _Optional[float] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., max_frames: _Optional[int] = ..., embedding_dtype: _Optional[_Union[DType, str]] = ..., return_state: _Optional[bool] = ..., chunk_frames: _Optional[int] = ...) -> None: ...

class VideoRequest(_message.Message):
    __slots__ = ("options", "path", "data")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    options: VideoOptions
    path: str
    data: bytes
    def __init__(self, options: _Optional[_Union[VideoOptions, _Mapping]] = ..., path: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class VideoSummary(_message.Message):
    __slots__ = ("frames", "width", "height", "fps", "codec", "final_state")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    FINAL_STATE_FIELD_NUMBER: _ClassVar[int]
    frames: int
    width: int
    height: int
    fps: float
    codec: str
    final_state: State
    def __init__(self, frames: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[float] = ..., codec: _Optional[str] = ..., final_state: _Optional[_Union[State, _Mapping]] = ...) -> None: ...

class VideoResponse(_message.Message):
    __slots__ = ("embeddings", "timestamps_ms", "frame_indices", "summary", "weights")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDICES_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    embeddings: Tensor
    timestamps_ms: _containers.RepeatedScalarFieldContainer[float]
    frame_indices: _containers.RepeatedScalarFieldContainer[int]
    summary: VideoSummary
    weights: WeightsVersion
    def __init__(self, embeddings: _Optional[_Union[Tensor, _Mapping]] = ..., timestamps_ms: _Optional[_Iterable[float]] = ..., frame_indices: _Optional[_Iterable[int]] = ..., summary: _Optional[_Union[VideoSummary, _Mapping]] = ..., weights: _Optional[_Union[WeightsVersion, _Mapping]] = ...) -> None: ...

class PushWeightsRequest(_message.Message):
    __slots__ = ("data", "learner_step", "sha256")
    DATA_FIELD_NUMBER: _ClassVar[int]
    LEARNER_STEP_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    learner_step: int
    sha256: str
    def __init__(self, data: _Optional[bytes] = ..., learner_step: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class PushWeightsResponse(_message.Message):
    __slots__ = ("weights", "install_ms")
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    INSTALL_MS_FIELD_NUMBER: _ClassVar[int]
    weights: WeightsVersion
    install_ms: float
    def __init__(self, weights: _Optional[_Union[WeightsVersion, _Mapping]] = ..., install_ms: _Optional[float] = ...) -> None: ...
