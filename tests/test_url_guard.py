"""The URL address policy and what may be shown of a URL: pure functions, table tests."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from broker.config import ConfigError, load_config
from broker.url_guard import address_problem, parse_networks, scheme_problem, shown_url
from gpu_agent.config import AgentConfig
from gpu_agent.srt import SrtError, parse_subtitles


@pytest.mark.parametrize(
    ("address", "allow", "problem"),
    [
        ("8.8.8.8", "", None),
        ("1.1.1.1", "", None),
        ("2606:4700::1111", "", None),
        ("::ffff:8.8.8.8", "", None),  # IPv4-mapped: judged by the IPv4 address
        ("64:ff9b::808:808", "", None),  # NAT64 to a public address
        ("127.0.0.1", "", "a loopback address"),
        ("127.255.0.9", "", "a loopback address"),
        ("::1", "", "a loopback address"),
        ("::ffff:127.0.0.1", "", "a loopback address"),
        ("64:ff9b::7f00:1", "", "a loopback address"),
        ("2002:7f00:1::", "", "a loopback address"),  # 6to4 wrapping 127.0.0.1
        ("10.1.2.3", "", "a private address"),
        ("172.16.0.1", "", "a private address"),
        ("172.31.255.254", "", "a private address"),
        ("192.168.1.1", "", "a private address"),
        ("::ffff:10.0.0.1", "", "a private address"),
        ("fc00::1", "", "a private address"),
        ("fd12:3456::1", "", "a private address"),
        ("fec0::1", "", "a private (site-local) address"),
        ("169.254.169.254", "", "a link-local address"),
        ("fe80::1", "", "a link-local address"),
        ("100.64.0.1", "", "a carrier-grade NAT address"),
        ("100.127.255.254", "", "a carrier-grade NAT address"),
        ("224.0.0.1", "", "a multicast address"),
        ("239.1.2.3", "", "a multicast address"),
        ("ff02::1", "", "a multicast address"),
        ("0.0.0.0", "", "an unspecified address"),
        ("::", "", "an unspecified address"),
        ("240.0.0.1", "", "a reserved address"),
        ("255.255.255.255", "", "a reserved address"),
        ("0.1.2.3", "", "not on the public internet"),
        ("192.0.2.1", "", "not on the public internet"),  # TEST-NET-1
        ("198.18.0.1", "", "not on the public internet"),  # benchmarking
        ("2001:db8::1", "", "not on the public internet"),  # documentation
        ("2001::1", "", "not on the public internet"),  # Teredo
        ("10.1.2.3", "10.0.0.0/8", None),
        ("10.1.2.3", "10.0.0.0/16", "a private address"),
        ("127.0.0.1", "127.0.0.0/8", None),
        ("::ffff:127.0.0.1", "127.0.0.0/8", None),
        ("::1", "127.0.0.0/8", "a loopback address"),
        ("fd00::5", "192.168.0.0/16, fd00::/8", None),
        ("169.254.169.254", "10.0.0.0/8", "a link-local address"),
    ],
)
def test_address_policy(address: str, allow: str, problem: str | None) -> None:
    got = address_problem(ip_address(address), parse_networks(allow))
    assert got == problem if problem is None else problem in (got or "")


@pytest.mark.parametrize("spec", ["10.0.0.0/8,banana", "10.0.0.0/33", "fd00::/8, ::g"])
def test_bad_allow_networks_fail_at_start_naming_the_variable(spec: str) -> None:
    with pytest.raises(ConfigError, match="VIDFLEET_URL_ALLOW_NETWORKS"):
        load_config(AgentConfig, env={"VIDFLEET_URL_ALLOW_NETWORKS": spec})


def test_allow_networks_parse() -> None:
    assert [str(n) for n in parse_networks(" 10.0.0.0/8, ,fd00::/8,192.168.1.7")] == [
        "10.0.0.0/8", "fd00::/8", "192.168.1.7/32"]
    assert parse_networks("") == ()
    config = load_config(AgentConfig, env={"VIDFLEET_URL_ALLOW_NETWORKS": "10.20.0.0/16"})
    assert config.url_allow_networks == "10.20.0.0/16"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://alice:hunter2@host:8080/a/b.mp4?sig=x#frag", "http://host:8080/a/b.mp4"),
        ("https://alice@host/x.mp4", "https://host/x.mp4"),
        ("http://a:p@ss@host/x", "http://host/x"),
        ("http://host/p@th/x.mp4?token=1", "http://host/p@th/x.mp4"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("http://[bad/x", "<an unparsable URL>"),
    ],
)
def test_shown_url_drops_credentials_and_query(url: str, shown: str) -> None:
    assert shown_url(url) == shown


@pytest.mark.parametrize(
    ("ref", "refused"),
    [
        ("file:///etc/passwd", "file"),
        ("FILE:///etc/passwd", "file"),
        ("ftp://host/x.mp4", "ftp"),
        ("gopher://host:70/_x", "gopher"),
        ("data:text/plain,hi", "data"),
        ("http://host/x", None),
        ("HTTPS://host/x", None),
        ("obj:u1/talk.srt", None),
        ("/etc/passwd", None),
    ],
)
def test_scheme_problem(ref: str, refused: str | None) -> None:
    problem = scheme_problem(ref)
    if refused is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(f"{refused}: URLs are refused")
        assert "etc" not in problem and "host" not in problem


@pytest.mark.parametrize("data", [
    b"SECRET-TOKEN-123\n00:00:01,000 --> 00:00:02,000\nHi\n",
    b"1\nSECRET-TOKEN-123\nHi\n",
    b"1\r\nSECRET-TOKEN-123 --> \r\n",
])
def test_subtitle_errors_never_quote_the_file(data: bytes) -> None:
    with pytest.raises(SrtError, match=r"line \d") as caught:
        parse_subtitles(data)
    assert "SECRET" not in str(caught.value)
