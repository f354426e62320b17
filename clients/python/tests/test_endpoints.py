"""Unit tests of the transport choice: which endpoint of ``GET /v1/endpoints`` the client
takes (TLS with its pin where offered, else TCP) and which endpoint strings it accepts."""

import pytest

from natter.connection import best_endpoint, parse_endpoint

BOTH = {
    "http": "127.0.0.1:7180",
    "tcp": "127.0.0.1:7100",
    "tls": "127.0.0.1:7101",
    "urls": ["tcp://127.0.0.1:7100", "tls://127.0.0.1:7101", "ws://127.0.0.1:7102/"],
    "cert_sha256": "ab" * 32,
}


def test_tls_with_its_pin_is_preferred():
    assert best_endpoint(BOTH) == ("tls://127.0.0.1:7101", "ab" * 32)


def test_tcp_without_tls_or_without_a_pin():
    tcp_only = {"http": "127.0.0.1:7180", "tcp": "127.0.0.1:7100", "urls": ["tcp://127.0.0.1:7100"]}
    assert best_endpoint(tcp_only) == ("tcp://127.0.0.1:7100", None)
    unpinned = dict(BOTH, cert_sha256=None)
    assert best_endpoint(unpinned) == ("tcp://127.0.0.1:7100", None)


def test_endpoint_strings():
    assert parse_endpoint("tls://127.0.0.1:7101") == ("tls", "127.0.0.1", 7101)
    assert parse_endpoint("tcp://[::1]:7100") == ("tcp", "::1", 7100)
    assert parse_endpoint("127.0.0.1:7100") == ("tcp", "127.0.0.1", 7100)
    for bad in ("ws://127.0.0.1:7102/", "tls://nohost", "quic://1.2.3.4:1"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)
