"""Channels: plaintext or TLS (optionally with a client certificate), an optional bearer token sent with
every call, gRPC's own retry policy for the unary calls and keepalive pings for long-lived streams.

All channel options are built here, once, for the sync and the asyncio clients.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = [
    "DEFAULT_KEEPALIVE_S",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_RETRY",
    "RetryPolicy",
    "Tls",
    "call_metadata",
    "channel_options",
    "open_channel",
]

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
# Below the idle timeouts of common load balancers and NATs (60 s and up), above the server's
# --keepalive-min-ping-interval-s (10 s by default), which closes connections that ping faster.
DEFAULT_KEEPALIVE_S = 30.0
KEEPALIVE_TIMEOUT_MS = 20_000  # a ping unanswered this long means the connection is dead
SERVICE = "vidlstm.v1.Encoder"
# Only calls that are safe to send twice: a stream step or a video upload is never replayed.
RETRIED_METHODS = ("GetModelInfo", "Encode")
GRPC_MAX_ATTEMPTS = 5  # gRPC caps attempts at 5 whatever the service config says


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's own retries of a refused `GetModelInfo` or `Encode` call, within the call's deadline.

    The n-th retry waits a random time up to `initial_backoff_s * backoff_multiplier**(n-1)` (at most
    `max_backoff_s`); `max_attempts` counts the first try. Streams are never retried.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    backoff_multiplier: float = 2.0
    retryable_codes: tuple[str, ...] = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= GRPC_MAX_ATTEMPTS:
            raise ValueError(
                f"max_attempts must be 2 to {GRPC_MAX_ATTEMPTS} (gRPC's cap), got {self.max_attempts};"
                " pass retry=None for no retries"
            )
        if not 0 < self.initial_backoff_s <= self.max_backoff_s < math.inf:
            raise ValueError(
                f"backoffs must satisfy 0 < initial_backoff_s <= max_backoff_s, got"
                f" {self.initial_backoff_s} and {self.max_backoff_s}"
            )
        if not 1 <= self.backoff_multiplier < math.inf:
            raise ValueError(f"backoff_multiplier must be >= 1, got {self.backoff_multiplier}")
        unknown = [c for c in self.retryable_codes if c not in grpc.StatusCode.__members__ or c == "OK"]
        if unknown or not self.retryable_codes:
            raise ValueError(
                f"retryable_codes must be gRPC status names other than OK (e.g. 'UNAVAILABLE'),"
                f" got {self.retryable_codes!r}"
            )

    def service_config(self) -> str:
        """The channel's service config (JSON): this policy for the retried methods only."""
        policy = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": _duration(self.initial_backoff_s),
            "maxBackoff": _duration(self.max_backoff_s),
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": list(self.retryable_codes),
        }
        names = [{"service": SERVICE, "method": method} for method in RETRIED_METHODS]
        return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class Tls:
    """TLS to the server: `ca` verifies it (None: the system's roots); `cert` + `key` are this
    client's certificate for mutual TLS."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


def channel_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    lb_policy: str = "pick_first",
    retry: RetryPolicy | None = DEFAULT_RETRY,
    keepalive_s: float | None = DEFAULT_KEEPALIVE_S,
) -> list[tuple[str, Any]]:
    """Message limits, load balancing, and the retry and keepalive options (None: off)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.lb_policy_name", lb_policy),
        *_retry_options(retry, max_message_bytes),
        *_keepalive_options(keepalive_s),
    ]


def _retry_options(retry: RetryPolicy | None, max_message_bytes: int) -> list[tuple[str, Any]]:
    if retry is None:
        return []
    # gRPC keeps a copy of the request to resend it; past this size (256 KiB by default, less than
    # a few raw frames) it would silently stop retrying.
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", retry.service_config()),
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
    ]


def _keepalive_options(keepalive_s: float | None) -> list[tuple[str, Any]]:
    """Pings every `keepalive_s` seconds, also on a stream that sends nothing (an actor that waits):
    load balancers keep the connection, and a dead one is noticed."""
    if keepalive_s is None:
        return []
    if not 0 < keepalive_s < math.inf:
        raise ValueError(f"keepalive_s must be > 0 seconds, or None for no pings, got {keepalive_s}")
    return [
        ("grpc.keepalive_time_ms", round(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # 0: no limit (gRPC stops after 2 by default)
    ]


def _duration(seconds: float) -> str:
    """Seconds as a protobuf JSON duration ("0.100000000s")."""
    return f"{seconds:.9f}s"


def open_channel(target: str, tls: Tls | None, options: list[tuple[str, Any]], *, asyncio: bool) -> Any:
    """A sync or asyncio channel, secure when `tls` is given."""
    module: Any = grpc.aio if asyncio else grpc
    if tls is None:
        return module.insecure_channel(target, options=options)
    return module.secure_channel(target, tls.credentials(), options=options)


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()
