"""Channels and call credentials: plaintext or TLS (optionally with a client certificate), and an
optional bearer token sent with every call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "Tls", "call_metadata", "channel_options", "open_channel"]

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


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
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, lb_policy: str = "pick_first"
) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.lb_policy_name", lb_policy),
    ]


def open_channel(
    target: str, tls: Tls | None, max_message_bytes: int, lb_policy: str, *, asyncio: bool
) -> Any:
    """A sync or asyncio channel, secure when `tls` is given."""
    options = channel_options(max_message_bytes, lb_policy)
    module: Any = grpc.aio if asyncio else grpc
    if tls is None:
        return module.insecure_channel(target, options=options)
    return module.secure_channel(target, tls.credentials(), options=options)


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()
