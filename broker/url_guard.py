"""Which addresses a URL a tenant names may be reached at: a pure policy, no I/O. Agents
fetch URL inputs under it, and the controller posts webhooks under it.

A job's URL is chosen by whoever submits it, and the agent fetches it from inside the machine's
network (the controller posts to a webhook from inside its own). Without this policy a job
could read a loopback admin port, the cloud metadata service (169.254.169.254: instance
credentials) or anything on the private network, and get it back burned into its output or
echoed in an error. So only public internet addresses are reached, plus the private ranges a
deployment lists (``VIDFLEET_URL_ALLOW_NETWORKS`` for agents, ``VIDFLEET_WEBHOOK_ALLOW_NETWORKS``
for the controller). Allowing too much here hands every job submitter that network position.

IPv6 forms that carry an IPv4 address (``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4
``2002::/16``) are judged by the IPv4 address they reach.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "ALLOW_NETWORKS_VAR",
    "IPAddress",
    "Network",
    "address_problem",
    "parse_networks",
    "scheme_problem",
    "shown_url",
]

IPAddress = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

ALLOW_NETWORKS_VAR = "VIDFLEET_URL_ALLOW_NETWORKS"
_NAT64 = IPv6Network("64:ff9b::/96")
_SHARED = IPv4Network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_RFC1918 = tuple(IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_ULA = IPv6Network("fc00::/7")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,15}):")


def parse_networks(spec: str, setting: str = ALLOW_NETWORKS_VAR) -> tuple[Network, ...]:
    """``"10.0.0.0/8, fd00::/8"`` -> networks. A bare address is a /32 (/128). Raises
    ValueError naming the bad entry (and ``setting``, where it came from)."""
    networks: list[Network] = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        try:
            networks.append(ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{setting}: {entry!r} is not a CIDR network like "
                             "10.0.0.0/8 or fd00::/8") from None
    return tuple(networks)


def _reached(ip: IPAddress) -> IPAddress:
    """The address a connection to ``ip`` really reaches."""
    if isinstance(ip, IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return IPv4Address(int(ip) & 0xFFFF_FFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def address_problem(ip: IPAddress, allowed: Sequence[Network] = ()) -> str | None:
    """None when ``ip`` may be fetched from, else what kind of address it is
    ("a loopback address"). ``allowed`` networks are fetched from whatever their kind."""
    reached = _reached(ip)
    if any(a in net for a in (ip, reached) for net in allowed if a.version == net.version):
        return None
    if reached.is_unspecified:
        return "an unspecified address"
    if reached.is_loopback:
        return "a loopback address"
    if reached.is_link_local:
        return "a link-local address (where cloud metadata services live)"
    if reached.is_multicast:
        return "a multicast address"
    if reached in _SHARED:
        return "a carrier-grade NAT address (100.64.0.0/10)"
    if any(reached in net for net in _RFC1918) or reached in _ULA:
        return "a private address"
    if isinstance(reached, IPv6Address) and reached.is_site_local:
        return "a private (site-local) address"
    if reached.is_reserved:
        return "a reserved address"
    if not reached.is_global:
        return "a special-purpose address, not on the public internet"
    return None


def scheme_problem(ref: str) -> str | None:
    """For an input reference naming a URL scheme other than http(s): why it is refused."""
    match = _SCHEME.match(ref)
    if ref.startswith("obj:") or not match or match.group(1).lower() in ("http", "https"):
        return None
    return (f"{match.group(1).lower()}: URLs are refused; an input is obj:<name> or an "
            "http(s) URL")


def shown_url(url: str) -> str:
    """``url`` fit for an event or a log: scheme, host, port and path only. ``user:password@``
    and query strings (often signatures) must never be echoed."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<an unparsable URL>"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
