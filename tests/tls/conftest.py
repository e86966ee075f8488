"""Fixtures for the TLS interop tests: certificates and `dpuproxy tls-echo` servers.

`dpuproxy tls-echo` does the handshake through OpenSSL over memory buffers and every
application record through our own record layer; these tests point real clients at it
(Python `ssl`, `openssl s_client`).

Environment knobs (optional):

  DPUPROXY_BIN              the binary (default <repo>/target/debug/dpuproxy)
  DPUPROXY_STARTUP_TIMEOUT  seconds to wait for the server to listen (default 20)

Everything listens on 127.0.0.1 with an ephemeral port chosen by the kernel; every
wait is bounded; servers are killed (process group) at teardown.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))  # the shared proc_helpers

from proc_helpers import require_proxy_binary, self_signed_cert, stop_process, strip_ansi, tail  # noqa: E402

STARTUP_TIMEOUT = float(os.environ.get("DPUPROXY_STARTUP_TIMEOUT", "20"))
FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


@dataclasses.dataclass
class EchoServer:
    port: int
    cafile: str
    stderr_path: Path
    proc: subprocess.Popen

    def connection_log(self, local_port: int | None = None, timeout: float = 10.0) -> dict[str, str]:
        """The server's end-of-connection line for the client that used `local_port`, or,
        without a port, the only connection this server has served."""
        want = f"peer=127.0.0.1:{local_port} " if local_port is not None else ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            lines = [ln for ln in text.splitlines() if "tls-echo connection" in ln and want in ln]
            if lines:
                assert len(lines) == 1, lines
                return {k: v.strip('"') for k, v in FIELD.findall(lines[0])}
            time.sleep(0.05)
        pytest.fail(f"no connection log for local port {local_port}\n{tail(self.stderr_path, 4000)}", pytrace=False)

    def log_text(self) -> str:
        return strip_ansi(self.stderr_path.read_text(errors="replace"))


def proxy_binary() -> str:
    """The dpuproxy binary (DPUPROXY_BIN or target/debug); a clear failure if it is missing."""
    try:
        return str(require_proxy_binary())
    except (FileNotFoundError, PermissionError) as e:
        pytest.fail(str(e), pytrace=False)


def _start(workdir: Path, name: str, cert: Path, key: Path):
    out, err = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(
            [proxy_binary(), "tls-echo", "--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)],
            stdin=subprocess.DEVNULL,
            stdout=fo,
            stderr=fe,
            start_new_session=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        m = re.search(rb"tls-echo listening on 127\.0\.0\.1:(\d+)", out.read_bytes())
        if m:
            return EchoServer(int(m.group(1)), str(cert), err, proc)
        if proc.poll() is not None:
            pytest.fail(f"tls-echo exited with {proc.returncode}\n{tail(err, 4000)}", pytrace=False)
        time.sleep(0.05)
    stop_process(proc)
    pytest.fail(f"tls-echo did not listen within {STARTUP_TIMEOUT:g}s\n{tail(err, 4000)}", pytrace=False)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dpuproxy-tls")


@pytest.fixture(scope="session")
def ec_cert(workdir: Path) -> tuple[Path, Path]:
    """EC P-256, made by `dpuproxy gen-cert` (for ECDSA suites and TLS 1.3)."""
    cert, key = workdir / "ec-cert.pem", workdir / "ec-key.pem"
    cmd = [proxy_binary(), "gen-cert", "--cert", str(cert), "--key", str(key)]
    res = subprocess.run(cmd, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return cert, key


@pytest.fixture(scope="session")
def rsa_cert(workdir: Path) -> tuple[Path, Path]:
    """RSA 2048 (for ECDHE-RSA suites), made by the openssl CLI."""
    cert, key = workdir / "rsa-cert.pem", workdir / "rsa-key.pem"
    self_signed_cert(cert, key, "localhost", ["IP:127.0.0.1", "DNS:localhost"], newkey="rsa:2048", timeout=60)
    return cert, key


@pytest.fixture(scope="session")
def echo_ec(workdir: Path, ec_cert):
    srv = _start(workdir, "echo-ec", *ec_cert)
    yield srv
    stop_process(srv.proc)


@pytest.fixture(scope="session")
def echo_rsa(workdir: Path, rsa_cert):
    srv = _start(workdir, "echo-rsa", *rsa_cert)
    yield srv
    stop_process(srv.proc)


@pytest.fixture
def echo_fresh(tmp_path: Path, ec_cert):
    """A server of its own, for tests whose client cannot tell its local port (s_client)."""
    srv = _start(tmp_path, "echo", *ec_cert)
    yield srv
    stop_process(srv.proc)
