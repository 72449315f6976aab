"""PushWeights (v1): who may push, and receiving an upload within its size limit."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from vidlstm.v1 import encoder_pb2 as pb

from .auth import bearer_token, matches_any
from .errors import InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated, Unimplemented

__all__ = ["AdminCredentials", "Upload", "receive_weights"]


class AdminCredentials:
    """Who may push weights: a bearer token of `tokens`, or a client certificate (mutual TLS) whose
    names include one of `client_names`. Inference tokens never may; with neither configured,
    pushing is off."""

    def __init__(
        self, tokens: Sequence[str], client_names: Sequence[str], inference_tokens: Sequence[str]
    ) -> None:
        self._tokens = [token.encode() for token in tokens]
        self._client_names = {name.encode() for name in client_names}
        self._inference_tokens = [token.encode() for token in inference_tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens or self._client_names)

    def check(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if not self.enabled:
            raise Unimplemented(
                "PushWeights is off on this server: start it with --admin-tokens-file (or "
                "--admin-client-names under mutual TLS) to accept new weights"
            )
        token = bearer_token(context.invocation_metadata())
        presented = (token or "").encode()
        if token is not None and matches_any(presented, self._tokens):
            return
        names = set(context.peer_identities() or ())
        if names & self._client_names:
            return
        if (token is not None and matches_any(presented, self._inference_tokens)) or (
            token is None and names
        ):
            raise PermissionDenied(
                "this credential may call inference RPCs but not push weights: use an admin token "
                "(--admin-tokens-file) or a client certificate named in --admin-client-names"
            )
        raise Unauthenticated(
            "PushWeights needs an admin credential: send 'authorization: Bearer <admin token>' (a token of "
            "the server's --admin-tokens-file) or a client certificate named in --admin-client-names"
        )


@dataclass(frozen=True)
class Upload:
    data: bytes
    learner_step: int | None
    sha256: str  # hex, as the first message gave it ("" if it gave none); checked when staging
    received_at: float  # perf_counter at the last byte


async def receive_weights(requests: AsyncIterator[pb.PushWeightsRequest], *, max_bytes: int) -> Upload:
    """The whole file, refused as soon as it passes `max_bytes`."""
    parts: list[bytes] = []
    size = 0
    learner_step: int | None = None
    sha256 = ""
    first = True
    async for request in requests:
        if first:
            learner_step = request.learner_step if request.HasField("learner_step") else None
            sha256 = request.sha256.lower()
        elif request.HasField("learner_step") or request.sha256:
            raise InvalidArgument(
                "learner_step and sha256 are only read from the first message; send them there"
            )
        first = False
        size += len(request.data)
        if size > max_bytes:
            raise ResourceExhausted(
                f"weights upload over the limit of {max_bytes} bytes; raise the server's --max-weights-bytes"
            )
        parts.append(request.data)
    received_at = time.perf_counter()
    if size == 0:
        raise InvalidArgument("empty upload: send the .safetensors file's bytes in PushWeightsRequest.data")
    return Upload(b"".join(parts), learner_step, sha256, received_at)
