"""Bearer-token authentication for every RPC but the probes: the health service and KServe v2's
ServerLive/ServerReady (Kubernetes and load balancers send no token); PushWeights checks an admin
credential of its own instead."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

__all__ = ["OPEN_SERVICES", "SELF_CHECKED", "BearerTokenInterceptor", "bearer_token", "matches_any"]

OPEN_SERVICES = (  # prefixes of full method names
    "/grpc.health.v1.Health/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
)
# Methods that check their own, stronger credential (an admin token or certificate, see push.py).
SELF_CHECKED = ("/vidlstm.v1.Encoder/PushWeights",)
_MESSAGE = "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Lets a call through only with `authorization: Bearer <token>` for one of `tokens`.

    Every token is compared, in constant time, whatever the outcome: the time taken says nothing
    about which token, or how much of one, matched.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens or any(not t for t in tokens):
            raise ValueError("auth tokens must be non-empty strings")
        self._expected = [token.encode() for token in tokens]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if (
            handler is None
            or details.method.startswith(OPEN_SERVICES + SELF_CHECKED)
            or self._allowed(details)
        ):
            return handler
        return _denying(handler)

    def _allowed(self, details: grpc.HandlerCallDetails) -> bool:
        return matches_any((bearer_token(details.invocation_metadata) or "").encode(), self._expected)


def matches_any(presented: bytes, tokens: Sequence[bytes]) -> bool:
    """Whether `presented` is one of `tokens`, compared with every one in constant time: the time
    taken says nothing about which token, or how much of one, matched."""
    return any([hmac.compare_digest(presented, token) for token in tokens])


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` entry (the scheme in any case, RFC 7235)."""
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _denying(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)
