"""Who is calling: what per-client limits count against and what scopes a client's sequence ids."""

from __future__ import annotations

import hashlib
from typing import Any

import grpc

from .auth import bearer_token

__all__ = ["authenticated_client", "client_key"]


def authenticated_client(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The caller's credential: its bearer token (hashed), else its client certificate's identity
    under mutual TLS (the subject names gRPC reports: its SANs, else its CN, as the trusted CA issued
    them); None when the call carries neither."""
    token = bearer_token(context.invocation_metadata())
    if token is not None:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    identities = context.peer_identities()
    if identities:
        return "cert:" + b",".join(identities).decode(errors="replace")
    return None


def client_key(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Who a stream counts against: its credential, else its peer's address."""
    identity = authenticated_client(context)
    if identity is not None:
        return identity
    peer = context.peer()  # e.g. "ipv4:127.0.0.1:53422"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
