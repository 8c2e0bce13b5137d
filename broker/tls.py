"""What ``tls://`` means here: TLS or no connection.

nats-py 2.16 decides whether to switch to TLS from the server's plaintext INFO alone: with a
``tls://`` URL, a ``tls`` context and a CA, it still sends CONNECT (our JWT and a signature of
the server's nonce) in plaintext when INFO lacks ``tls_required``, so a man in the middle that
strips that flag, or a misconfigured server, gets credentials it can replay to the real server.
Its supported alternative, ``tls_handshake_first``, only works with servers configured for it
(``handshake_first`` in their ``tls`` block), so it is no general answer. ``TlsOnlyClient``
closes the gap; its docstring names the nats-py internals it depends on.
"""

from __future__ import annotations

from loguru import logger
from nats.aio.client import Client
from nats.aio.transport import TcpTransport
from nats.errors import Error as NatsError

from broker.config import ConfigError

__all__ = ["TlsNotOffered", "TlsOnlyClient", "is_tls_only", "server_urls", "tls_required"]


class TlsNotOffered(NatsError):
    """A ``tls://`` server answered without TLS; nothing was sent to it."""


def server_urls(url: str) -> list[str]:
    """The servers of a comma-separated NATS URL."""
    return [u.strip() for u in url.split(",") if u.strip()]


def _scheme(server: str) -> str:
    head, sep, _ = server.partition("://")
    return head.lower() if sep else "nats"  # nats-py reads "host:port" as nats://


def is_tls_only(url: str) -> bool:
    """True when ``url`` names at least one server and every one of them is ``tls://``."""
    servers = server_urls(url)
    return bool(servers) and all(_scheme(s) == "tls" for s in servers)


def tls_required(url: str) -> bool:
    """True when every server of ``url`` is ``tls://``, False when none is. A mix raises
    ``ConfigError``: TLS to some servers of a cluster only is a downgrade path for all."""
    servers = server_urls(url)
    tls = [s for s in servers if _scheme(s) == "tls"]
    if tls and len(tls) != len(servers):
        schemes = ", ".join(sorted({f"{_scheme(s)}://" for s in servers}))
        raise ConfigError(f"bad configuration: the NATS URL mixes {schemes} servers; TLS to "
                          "some servers only is TLS to none, so use tls:// for all of them")
    return bool(tls)


class TlsOnlyClient(Client):
    """A nats-py ``Client`` that sends nothing to a server unless the connection is TLS.

    WARNING: THIS DEPENDS ON nats-py INTERNALS. There was no other way: nats-py 2.16 has no
    option that makes ``tls://`` mandatory (the ``tls`` context is used only when INFO asks
    for TLS; ``tls_handshake_first`` needs the server's cooperation). It overrides the private
    ``Client._connect_command`` (called by ``_process_connect_init`` right before CONNECT is
    written, after the INFO-driven TLS upgrade) and presets the private ``_transport`` with
    ``_TlsOnlyTransport``, which nats-py keeps because it only makes a transport when it has
    none; it reads ``_current_server`` and ``_server_info`` for the error. nats-py is pinned
    exactly for this, and tests/test_tls.py fails if an upgrade moves these hooks. Both
    guards fail closed. Drop this class once nats-py refuses plaintext for ``tls://`` itself
    (nats.py PR #912 does in the new client, as nats.go's ``checkForSecure`` does).

    A refusal raises ``TlsNotOffered`` (a nats error, so connect and reconnect treat it like
    any failed attempt and try again) and closes the socket. The transport drops any other
    write to a connection that is not TLS: nats-py flushes publishes buffered while
    disconnected into whatever socket it holds when the client is closed, even one whose
    INFO has not arrived yet.
    """

    def __init__(self) -> None:
        if not callable(getattr(Client, "_connect_command", None)):  # fail closed, loudly
            raise RuntimeError("nats-py has no Client._connect_command any more: tls:// can "
                               "not be guaranteed; see broker/tls.py")
        super().__init__()
        self._transport = _TlsOnlyTransport()

    def _connect_command(self) -> bytes:
        transport = self._transport
        if not isinstance(transport, _TlsOnlyTransport) or not transport.is_tls():
            if transport:
                transport.close()
            raise TlsNotOffered(self._refusal())
        return super()._connect_command()

    def _refusal(self) -> str:
        where = self._current_server.uri.netloc if self._current_server else "the server"
        where = where.rpartition("@")[2]  # never the userinfo of a URL
        optional = bool(self._server_info.get("tls_available"))
        offer = ("offers TLS only as an option (tls_available), which nats-py does not take"
                 if optional else "did not offer it (no tls_required in its INFO)")
        return (f"nats: TLS required (tls:// URL) but {where} {offer}; a plaintext server or "
                "a man in the middle; nothing was sent")


class _TlsOnlyTransport(TcpTransport):
    """A TCP transport that writes only once TLS is up; before that, writes are dropped."""

    def __bool__(self) -> bool:
        return True  # so that nats-py keeps it instead of making a plain TcpTransport

    def is_tls(self) -> bool:
        writer = self._io_writer  # the stream after any upgrade
        return writer is not None and writer.get_extra_info("ssl_object") is not None

    def write(self, payload: bytes) -> None:
        self.writelines([payload])

    def writelines(self, payload: list[bytes]) -> None:
        if self.is_tls():
            super().writelines(payload)
        else:
            logger.warning("dropped {size} bytes for a server not known to speak TLS",
                           size=sum(len(p) for p in payload))

    async def drain(self) -> None:
        if self.is_tls():
            await super().drain()
