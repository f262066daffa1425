"""The /metrics server every service runs: plaintext or HTTPS with the service's certificate,
a clear error for a bad address, and a listening socket a forked child (vLLM's engine
processes) does not keep."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import httpx
import pytest

from tierroute.core.config import ConfigError, TlsConfig
from tierroute.runtime.metrics import RPC_HANDLED, MetricsServer
from tierroute.runtime.tls import write_dev_certs


def test_metrics_are_served_in_prometheus_text_format() -> None:
    RPC_HANDLED.labels("unary", "test.Service", "Method", "OK").inc()
    server = MetricsServer.start("127.0.0.1:0")
    try:
        r = httpx.get(f"http://127.0.0.1:{server.port}/metrics")
        assert r.status_code == 200
        assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="Method"' in r.text
    finally:
        server.stop()


def test_with_tls_the_metrics_are_served_over_https(tmp_path: Path) -> None:
    write_dev_certs(tmp_path, ["127.0.0.1"])
    tls = TlsConfig(enabled=True, ca=tmp_path / "ca.pem", cert=tmp_path / "server.pem",
                    key=tmp_path / "server-key.pem", mutual=False)  # fmt: skip
    server = MetricsServer.start("127.0.0.1:0", tls)
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        r = httpx.get(f"https://127.0.0.1:{server.port}/metrics", verify=context)
        assert r.status_code == 200 and "grpc_server_handled_total" in r.text
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
    finally:
        server.stop()


@pytest.mark.parametrize("listen", ["9100", "localhost:http", "256.0.0.1:9100"])
def test_a_bad_address_is_a_config_error_naming_the_setting(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"tiers\[small\]\.metrics_listen"):
        MetricsServer.start(listen, setting="tiers[small].metrics_listen")


def test_a_forked_child_does_not_keep_the_listening_socket() -> None:
    server = MetricsServer.start("127.0.0.1:0")
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: as vLLM's engine process starts
            try:
                server._server.socket.getsockname()
                os.write(write, b"open")
            except OSError:
                os.write(write, b"closed")
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(read, 16) == b"closed"
        assert httpx.get(f"http://127.0.0.1:{server.port}/metrics").status_code == 200
    finally:
        server.stop()
