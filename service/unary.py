"""Error mapping and the default deadline for the unary handlers of every front-end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, Protocol, TypeVar

import grpc

from .errors import ServiceError

__all__ = ["status_on_error"]

Response = TypeVar("Response")


class _HasDefaultDeadline(Protocol):
    default_deadline: float


def status_on_error(
    handler: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]]:
    """Turns a `ServiceError` raised by a unary handler into its status code and message, and gives
    calls that set no deadline the server's default one (`self.default_deadline`)."""

    @wraps(handler)
    async def wrapper(
        self: _HasDefaultDeadline, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Response:
        own_deadline = self.default_deadline if context.time_remaining() is None else None
        try:
            async with asyncio.timeout(own_deadline):
                return await handler(self, request, context)
        except ServiceError as error:
            await context.abort(error.code, str(error))
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the call set no deadline and ran past the server's default of {self.default_deadline:g} s",
            )
        raise AssertionError("unreachable: abort raises")

    return wrapper
