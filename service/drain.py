"""Draining: between SIGTERM and the port closing, health answers NOT_SERVING and new calls are
refused, while calls in flight and open streams finish."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

from .auth import OPEN_SERVICES

__all__ = ["DRAINING_MESSAGE", "DrainGate"]

DRAINING_MESSAGE = "server is shutting down; retry on another replica"


class DrainGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts the calls in flight; once closed, refuses new ones (probes aside) with UNAVAILABLE.

    grpc.aio's `server.stop(grace)` refuses every new call at once, health checks included, so probes
    would never see NOT_SERVING. The gate keeps the port open while it drains: health answers, new
    work goes to another replica, and calls in flight and open streams finish.
    """

    def __init__(self) -> None:
        self._closed = False
        self._gated: dict[tuple[grpc.RpcMethodHandler, bool], grpc.RpcMethodHandler] = {}
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        key = (handler, self._closed)
        gated = self._gated.get(key)
        if gated is None:  # made once per method and state: a unary call pays only the counting
            kind = f"{_side(handler.request_streaming)}_{_side(handler.response_streaming)}"
            behavior = (
                _refuse if self._closed else self._counted(getattr(handler, kind), handler.response_streaming)
            )
            gated = self._gated[key] = handler._replace(**{kind: behavior})
        return gated

    def close(self) -> None:
        """From now on, new calls (probes aside) are refused."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_idle(self, timeout: float) -> None:
        """Returns when no call is in flight, or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()

    def _counted(self, behavior: Any, response_streaming: bool) -> Any:
        """`behavior`, counted while it runs (the gate is innermost: streaming ones are async generators)."""

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with self._tracked():
                return await behavior(request, context)

        async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            with self._tracked():
                async for response in behavior(request, context):
                    yield response

        return streaming if response_streaming else unary

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()


def _side(streaming: bool) -> str:
    return "stream" if streaming else "unary"


async def _refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)
