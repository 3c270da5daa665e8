"""Who is calling: the client's address and scheme, believing `X-Forwarded-*` only from trusted proxies.

Anyone can send `X-Forwarded-For: 1.2.3.4`, so the header means something only when the peer that
connected is one of `server.trusted_proxies`. Each proxy appends the address it received the request
from, so the chain is read from the right: trusted proxies are skipped, and the first address that is
not one of them is the client (everything to its left was written by the client, and may be forged).
From an untrusted peer the headers are ignored and the peer's own address is the client's.

The resolved address replaces the ASGI scope's `client`, and a trusted proxy's
`X-Forwarded-Proto: https` sets its `scheme`, so everything downstream (the HTTPS policy, the access
log) reads one answer. uvicorn's own proxy-header handling is turned off in `cli.py` for that reason.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TrustedProxies:
    """The networks whose forwarding headers are believed (none by default)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        """Whether `address` (an IP, possibly with a port) is a trusted proxy's."""
        ip = _parse_ip(address)
        return ip is not None and self._trusts_ip(ip)

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The right-most address in `forwarded_for, peer` that is not a trusted proxy's.

        When every hop is trusted, the left-most (the farthest the chain reaches); an entry that is not
        an IP address (`unknown`, garbage) stops the walk there, since nothing left of it can be checked.
        """
        if forwarded_for is None or not self.trusts(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        client = peer
        for hop in reversed(hops):
            ip = _parse_ip(hop)
            if ip is None:
                return client
            client = str(ip)
            if not self._trusts_ip(ip):
                return client
        return client

    def _trusts_ip(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.networks)


class ForwardedHeadersMiddleware:
    """Rewrite the scope's `client` and `scheme` from a trusted proxy's `X-Forwarded-For` / `-Proto`."""

    def __init__(self, app: ASGIApp, trusted: TrustedProxies) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and self.trusted and client and self.trusted.trusts(client[0]):
            forwarded_for, proto = _forwarded(scope["headers"])
            address = self.trusted.client_address(client[0], forwarded_for)
            if address != client[0]:
                scope["client"] = (address, 0)  # the client's port is not forwarded
            if proto in ("http", "https"):
                scope["scheme"] = proto
        await self.app(scope, receive, send)


def _forwarded(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """Every `X-Forwarded-For` joined in order, and the last hop's `X-Forwarded-Proto` (lowercased)."""
    chain: list[str] = []
    proto: str | None = None
    for name, value in headers:
        if name == b"x-forwarded-for":
            chain.append(value.decode("latin-1"))
        elif name == b"x-forwarded-proto":
            # A list when proxies append; the last value is the one the trusted peer itself wrote.
            proto = value.decode("latin-1").rsplit(",", 1)[-1].strip().lower()
    return (", ".join(chain) if chain else None), proto


def _parse_ip(text: str) -> IPAddress | None:
    """An address from `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`; None for anything else."""
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
