"""URL inputs reach only the public internet unless a network is allowed: every hop checked,
the connection pinned to the checked address, nothing fetched or secret echoed back, and
connection failures that all look alike. Real HTTP servers on loopback (threads)."""

from __future__ import annotations

import asyncio
import functools
import re
import socket
from collections.abc import Iterator, Sequence
from ipaddress import ip_address
from pathlib import Path

import httpx
import pytest
from loguru import logger

from broker.events import Failed
from broker.jobs import CaptionJob
from broker.subjects import DEFAULT_TENANT, job_subject
from broker.url_guard import IPAddress, parse_networks
from broker.url_transport import GuardedTransport, Resolver, resolve_host
from gpu_agent.dispatch_link import DispatchLink
from gpu_agent.errors import JobFailure
from gpu_agent.inputs import MAX_REDIRECTS, InputFetcher
from tests.conftest import agent_config, running_agent
from tests.loopback_http import LoopbackServer as Server
from tests.loopback_http import serve

SRT = b"1\n00:00:00,500 --> 00:00:01,500\nHello\n"



@pytest.fixture
def web(media_dir: Path) -> Iterator[Server]:
    yield from serve("127.0.0.1", media_dir)


@pytest.fixture
def web2(media_dir: Path) -> Iterator[Server]:
    """Another loopback address: what a redirect out of the allowed network would reach."""
    yield from serve("127.0.0.2", media_dir)


def _fetcher(nc, *, allow: str = "", resolve: Resolver = resolve_host, inner=None,
             timeout_s: float = 5.0, total_s: float = 30.0, min_rate: float = 0.0,
             window_s: float = 30.0) -> InputFetcher:
    kwargs = {"inner": inner} if inner else {}
    # URLs only: objects would come through the dispatcher (none runs here).
    return InputFetcher(DispatchLink(nc, "vf-ssrf"), max_bytes=1 << 30, url_timeout_s=timeout_s,
                        url_total_timeout_s=total_s, url_min_bytes_per_s=min_rate,
                        url_slow_window_s=window_s,
                        transport=functools.partial(GuardedTransport, parse_networks(allow),
                                                    resolve=resolve, **kwargs))


async def _fails(fetcher: InputFetcher, url: str, tmp_path: Path) -> JobFailure:
    with pytest.raises(JobFailure) as caught:
        await asyncio.wait_for(
            fetcher.fetch(url, tmp_path / "in", label="video", tenant="default", job_id="j1"), 30)
    return caught.value


@pytest.mark.parametrize(("path", "said"), [
    ("http://127.0.0.1:{port}/talk.srt", "127.0.0.1 is a loopback address"),
    ("http://localhost:{port}/talk.srt", "localhost resolves to "),
    ("http://[::1]:{port}/talk.srt", "::1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]:{port}/talk.srt", "::ffff:7f00:1 is a loopback address"),
    ("http://0.0.0.0:{port}/talk.srt", "0.0.0.0 is an unspecified address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    ("http://10.0.0.1/x.mp4", "10.0.0.1 is a private address"),
    ("http://100.64.0.1/x.mp4", "carrier-grade NAT"),
])
async def test_only_the_public_internet_by_default(nc, web: Server, tmp_path: Path, path: str,
                                                   said: str) -> None:
    failure = await _fails(_fetcher(nc), path.format(port=web.server_address[1]), tmp_path)
    assert failure.code == "input_forbidden" and not failure.retryable
    assert said in failure.message, failure.message
    assert "unless VIDFLEET_URL_ALLOW_NETWORKS allows them" in failure.message
    assert web.seen == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1:{port}/talk.srt",
                                 "gopher://127.0.0.1:{port}/_x"])
async def test_other_schemes_are_refused(nc, web: Server, tmp_path: Path, url: str) -> None:
    failure = await _fails(_fetcher(nc, allow="0.0.0.0/0,::/0"),
                           url.format(port=web.server_address[1]), tmp_path)
    scheme = url.split(":", 1)[0]
    assert failure.code == "input_forbidden" and not failure.retryable
    assert f"{scheme}: URLs are refused" in failure.message
    assert web.seen == []


async def test_an_allowed_network_is_fetched(nc, web: Server, media_dir: Path,
                                             tmp_path: Path) -> None:
    web.routes |= {"/a": ("redirect", "/b"), "/b": ("redirect", f"{web.base}/talk.srt")}
    got = await _fetcher(nc, allow="127.0.0.1/32").fetch(f"{web.base}/a", tmp_path / "in",
                                                         label="srt", tenant="default", job_id="j1")
    assert got.read_bytes() == (media_dir / "talk.srt").read_bytes()
    assert [p for p, _ in web.seen] == ["/a", "/b", "/talk.srt"]


@pytest.mark.parametrize(("target", "said"), [
    ("{web2}/talk.srt", "127.0.0.2 is a loopback address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    ("http://[::1]:{port}/talk.srt", "::1 is a loopback address"),
    ("file:///etc/passwd", "file: URLs are refused"),
])
async def test_every_redirect_is_checked(nc, web: Server, web2: Server, tmp_path: Path,
                                         target: str, said: str) -> None:
    to = target.format(web2=web2.base, port=web2.server_address[1])
    web.routes["/out"] = ("redirect", to)
    failure = await _fails(_fetcher(nc, allow="127.0.0.1/32"),
                           f"http://bob:hunter2@127.0.0.1:{web.server_address[1]}/out?sig=S3",
                           tmp_path)
    assert failure.code == "input_forbidden" and not failure.retryable
    assert re.search(r"^video: http://127\.0\.0\.1:\d+/out redirects to \S+, which is "
                     "refused: ", failure.message), failure.message
    assert said in failure.message
    assert "hunter2" not in failure.message and "S3" not in failure.message
    assert web2.seen == []


async def test_redirects_are_bounded(nc, web: Server, tmp_path: Path) -> None:
    web.routes["/loop"] = ("redirect", "/loop")
    failure = await _fails(_fetcher(nc, allow="127.0.0.1/32"), f"{web.base}/loop", tmp_path)
    assert failure.code == "invalid_input" and not failure.retryable
    assert f"redirects more than {MAX_REDIRECTS} times" in failure.message
    assert len(web.seen) == MAX_REDIRECTS + 1


def _resolver(*answers: str) -> tuple[Resolver, list[str]]:
    """A DNS that gives each answer once, in turn (a rebinding attacker's), and logs asks."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> Sequence[IPAddress]:
        asked.append(host)
        return [ip_address(answers[len(asked) - 1])]
    return resolve, asked


async def test_dns_rebinding_cannot_move_the_connection(nc, web: Server,
                                                        tmp_path: Path) -> None:
    """The first answer is checked and connected to; the second (private) answer, given when
    a redirect asks again, is refused. A system lookup of the made-up name would fail, so
    the connection can only have used the checked address."""
    port = web.server_address[1]
    host = "media.rebind.invalid"
    web.routes["/again"] = ("redirect", f"http://{host}:{port}/talk.srt")
    resolve, asked = _resolver("127.0.0.1", "10.0.0.7")
    fetcher = _fetcher(nc, allow="127.0.0.1/32", resolve=resolve)
    failure = await _fails(fetcher, f"http://{host}:{port}/again", tmp_path)
    assert web.seen == [("/again", f"{host}:{port}")]  # Host kept, connection to 127.0.0.1
    assert asked == [host, host]
    assert failure.code == "input_forbidden"
    assert f"{host} resolves to 10.0.0.7, a private address" in failure.message


async def test_the_checked_public_address_is_the_one_connected_to(nc, tmp_path: Path) -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=SRT)

    def inner() -> httpx.AsyncBaseTransport:
        return httpx.MockTransport(answer)
    resolve, asked = _resolver("93.184.215.14", "127.0.0.1")
    fetcher = _fetcher(nc, resolve=resolve, inner=inner)
    got = await fetcher.fetch("https://media.example.com/s.srt", tmp_path / "a", label="srt",
                              tenant="default", job_id="j1")
    assert got.read_bytes() == SRT
    [request] = sent
    assert request.url.host == "93.184.215.14" and request.url.scheme == "https"
    assert request.headers["host"] == "media.example.com"
    assert request.extensions["sni_hostname"] == "media.example.com"  # TLS checks the name
    failure = await _fails(fetcher, "https://media.example.com/s.srt", tmp_path)
    assert "media.example.com resolves to 127.0.0.1, a loopback address" in failure.message
    assert len(sent) == 1 and asked == ["media.example.com"] * 2


async def test_credentials_and_queries_are_never_shown(nc, web: Server, tmp_path: Path) -> None:
    url = f"http://alice:hunter2@127.0.0.1:{web.server_address[1]}/gone.mp4?token=S3CRET"
    for fetcher, code in ((_fetcher(nc, allow="127.0.0.1/32"), "invalid_input"),
                          (_fetcher(nc), "input_forbidden")):
        failure = await _fails(fetcher, url, tmp_path)
        assert failure.code == code
        assert f"video: http://127.0.0.1:{web.server_address[1]}/gone.mp4" in failure.message
        assert not re.search("alice|hunter2|S3CRET", failure.message), failure.message


async def test_connection_failures_all_look_alike(nc, web: Server, tmp_path: Path) -> None:
    """Refused, reset, silent and unreachable: one code, one message (but for the port)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    web.routes |= {"/reset.mp4": ("reset", None), "/silent.mp4": ("silent", None)}

    def unreachable() -> httpx.AsyncBaseTransport:
        def fail(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("[Errno 101] Network is unreachable", request=request)
        return httpx.MockTransport(fail)
    port = web.server_address[1]
    cases = [(_fetcher(nc, allow="127.0.0.1/32"), f"http://127.0.0.1:{closed_port}/x.mp4"),
             (_fetcher(nc, allow="127.0.0.1/32"), f"http://127.0.0.1:{port}/reset.mp4"),
             (_fetcher(nc, allow="127.0.0.1/32", timeout_s=0.3),
              f"http://127.0.0.1:{port}/silent.mp4"),
             (_fetcher(nc, allow="127.0.0.1/32", inner=unreachable),
              f"http://127.0.0.1:{port}/unreachable.mp4")]
    seen = set()
    for fetcher, url in cases:
        failure = await _fails(fetcher, url, tmp_path)
        assert failure.retryable
        seen.add((failure.code, re.sub(r":\d+/\w+", ":PORT/PATH", failure.message)))
    assert seen == {("input_unavailable", "video: http://127.0.0.1:PORT/PATH.mp4: no HTTP "
                     "answer (the connection was refused, reset, unreachable or timed out)")}


async def test_a_stalled_download_fails_after_the_read_timeout(nc, web: Server,
                                                               tmp_path: Path) -> None:
    web.routes["/stall"] = ("stall", None)
    fetcher = _fetcher(nc, allow="127.0.0.1/32", timeout_s=0.3, total_s=60)
    failure = await _fails(fetcher, f"{web.base}/stall", tmp_path)
    assert failure.code == "input_timeout" and failure.retryable
    assert failure.message == f"video: {web.base}/stall sent nothing for 0.3s"


async def test_a_trickling_download_is_bounded_in_total(nc, web: Server,
                                                        tmp_path: Path) -> None:
    web.routes["/trickle"] = ("trickle", None)  # a byte every 50 ms: never idle for 5 s
    fetcher = _fetcher(nc, allow="127.0.0.1/32", timeout_s=5, total_s=0.6)
    failure = await _fails(fetcher, f"{web.base}/trickle", tmp_path)
    assert failure.code == "input_timeout" and failure.retryable
    assert failure.message == f"video: {web.base}/trickle: the download took over 0.6s"


async def test_a_dripping_download_fails_for_its_pace_long_before_the_total(
        nc, web: Server, tmp_path: Path) -> None:
    """A byte every 50 ms is never idle and would hold the machine for the whole total."""
    web.routes["/trickle"] = ("trickle", None)
    fetcher = _fetcher(nc, allow="127.0.0.1/32", timeout_s=5, total_s=60, min_rate=1000,
                       window_s=0.5)
    failure = await _fails(fetcher, f"{web.base}/trickle", tmp_path)
    assert failure.code == "input_too_slow" and failure.retryable
    assert "under the minimum of 1000 bytes/s" in failure.message, failure.message


async def test_the_agent_refuses_loopback_and_other_schemes(client, agent, js, web: Server,
                                                            media_dir: Path) -> None:
    """A default agent: final failures, nothing fetched, no secret in events or logs."""
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{message} {extra}")
    try:
        port = web.server_address[1]
        receipt = await client.submit(CaptionJob(
            video=f"http://alice:hunter2@127.0.0.1:{port}/talk.mp4?sig=S3CRET",
            srt=await client.upload_input(media_dir / "talk.srt")))
        refused = await client.result(receipt.job_id, timeout_s=30)
        await js.publish(job_subject(DEFAULT_TENANT, "caption", "fileurl"),  # as `nats pub` would
                         b'{"video": "file:///etc/passwd", "srt": "ftp://h/s.srt"}')
        scheme = await client.result("fileurl", timeout_s=30)
    finally:
        logger.remove(sink)
    assert isinstance(refused, Failed) and refused.attempt == 1
    assert refused.error.code == "input_forbidden"
    assert "127.0.0.1 is a loopback address" in refused.error.message
    assert isinstance(scheme, Failed) and scheme.error.code == "input_forbidden"
    assert scheme.error.message == ("video: file: URLs are refused; an input is obj:<name> or "
                                    "an http(s) URL")
    assert web.seen == []
    shown = [refused.error.message, scheme.error.message, *lines]
    assert not [s for s in shown if re.search("hunter2|S3CRET|passwd", s)]


async def test_an_allowed_agent_stays_inside_its_networks(client, js, nats_server, web: Server,
                                                          web2: Server, tmp_path: Path) -> None:
    """Allowed 127.0.0.1 only: a redirect to 127.0.0.2 is refused, and a fetched file's
    content never comes back in an error."""
    web.routes |= {"/out.mp4": ("redirect", f"{web2.base}/talk.mp4"),
                   "/s.srt": ("body", b"TOPSECRET-LINE\n00:00:01,000 --> 00:00:02,000\nx\n")}
    config = agent_config(nats_server, tmp_path / "a", url_allow_networks="127.0.0.1/32")
    async with running_agent(config):
        out = await client.submit(CaptionJob(video=f"{web.base}/out.mp4",
                                             srt=f"{web.base}/talk.srt"))
        redirected = await client.result(out.job_id, timeout_s=30)
        bad = await client.submit(CaptionJob(video=f"{web.base}/talk.mp4",
                                             srt=f"{web.base}/s.srt"))
        echoed = await client.result(bad.job_id, timeout_s=60)
    assert isinstance(redirected, Failed) and redirected.error.code == "input_forbidden"
    assert (f"video: {web.base}/out.mp4 redirects to {web2.base}/talk.mp4, which is refused: "
            "127.0.0.2 is a loopback address") in redirected.error.message
    assert web2.seen == []
    assert isinstance(echoed, Failed) and echoed.error.code == "invalid_input"
    assert "line 1" in echoed.error.message and "TOPSECRET" not in echoed.error.message
