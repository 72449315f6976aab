"""vidlstm.clients: light clients for the Encoder service (grpcio, protobuf, numpy; no torch)."""

from .channel import RetryPolicy, Tls
from .client import AsyncEncoderClient, EncoderClient
from .errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelMismatchError,
    PermissionDeniedError,
    ServerBusyError,
    ServerError,
    ServerUnavailableError,
    StreamClosedError,
    UnauthenticatedError,
    VidlstmError,
)
from .requests import EncodeResult, SequenceInput
from .session import AsyncSession, Session
from .state import RecurrentState
from .video import FrameSelection, VideoPart
from .weights import PushResult, WeightsVersion

__all__ = [
    "AsyncEncoderClient",
    "AsyncSession",
    "DeadlineExceededError",
    "EncodeResult",
    "EncoderClient",
    "FrameSelection",
    "InvalidInputError",
    "ModelMismatchError",
    "PermissionDeniedError",
    "PushResult",
    "RecurrentState",
    "RetryPolicy",
    "SequenceInput",
    "ServerBusyError",
    "ServerError",
    "ServerUnavailableError",
    "Session",
    "StreamClosedError",
    "Tls",
    "UnauthenticatedError",
    "VideoPart",
    "VidlstmError",
    "WeightsVersion",
]
