"""Client exceptions: one root, one class per status a caller may want to handle differently.

Each carries the server's message (what to fix) and the gRPC status code.
"""

from __future__ import annotations

import grpc

__all__ = [
    "DeadlineExceededError",
    "InvalidInputError",
    "ModelMismatchError",
    "PermissionDeniedError",
    "ServerBusyError",
    "ServerError",
    "ServerUnavailableError",
    "StreamClosedError",
    "UnauthenticatedError",
    "VidlstmError",
    "from_rpc_error",
]


class VidlstmError(Exception):
    """Root of every error the vidlstm clients raise."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class InvalidInputError(VidlstmError):
    """The request was malformed (INVALID_ARGUMENT): bad shape, format, size or image."""


class ModelMismatchError(VidlstmError):
    """State from another model was sent (FAILED_PRECONDITION)."""


class ServerBusyError(VidlstmError):
    """A limit was reached (RESOURCE_EXHAUSTED): streams, envs, queue or message size."""


class ServerUnavailableError(VidlstmError):
    """The server cannot be reached or is shutting down (UNAVAILABLE); retrying may work."""


class DeadlineExceededError(VidlstmError):
    """The call's deadline passed, or a stream was idle too long (DEADLINE_EXCEEDED)."""


class UnauthenticatedError(VidlstmError):
    """Missing or wrong credentials (UNAUTHENTICATED)."""


class PermissionDeniedError(VidlstmError):
    """Not allowed (PERMISSION_DENIED), e.g. a path outside the server's video root."""


class StreamClosedError(VidlstmError):
    """A session was used after its stream ended."""


class ServerError(VidlstmError):
    """Anything else: a server-side failure (INTERNAL, UNKNOWN, ...)."""


_BY_CODE: dict[grpc.StatusCode, type[VidlstmError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidInputError,
    grpc.StatusCode.FAILED_PRECONDITION: ModelMismatchError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ServerBusyError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}


def error_for(code: grpc.StatusCode, message: str) -> VidlstmError:
    return _BY_CODE.get(code, ServerError)(f"{code.name}: {message}", code)


def from_rpc_error(error: grpc.RpcError) -> VidlstmError:
    """Typed exception for a failed call, keeping the server's details."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return error_for(code, details or "")


def from_status_value(value: int, message: str) -> VidlstmError:
    """Typed exception for a per-request error on a stream (`RequestError.code`)."""
    code = next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)
    return error_for(code, message)
