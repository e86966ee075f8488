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
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("DPUPROXY_BIN", REPO / "target" / "debug" / "dpuproxy"))
STARTUP_TIMEOUT = float(os.environ.get("DPUPROXY_STARTUP_TIMEOUT", "20"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")
FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def tail(path: Path, limit: int = 4000) -> str:
    if not path.exists():
        return "<none>"
    return ANSI.sub("", path.read_bytes()[-limit:].decode("utf-8", "replace")) or "<empty>"


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
            text = ANSI.sub("", self.stderr_path.read_text(errors="replace"))
            lines = [ln for ln in text.splitlines() if "tls-echo connection" in ln and want in ln]
            if lines:
                assert len(lines) == 1, lines
                return {k: v.strip('"') for k, v in FIELD.findall(lines[0])}
            time.sleep(0.05)
        pytest.fail(f"no connection log for local port {local_port}\n{tail(self.stderr_path)}", pytrace=False)

    def log_text(self) -> str:
        return ANSI.sub("", self.stderr_path.read_text(errors="replace"))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _start(workdir: Path, name: str, cert: Path, key: Path):
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: run `cargo build -p dpuproxy` first", pytrace=False)
    out, err = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(
            [str(BIN), "tls-echo", "--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)],
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
            pytest.fail(f"tls-echo exited with {proc.returncode}\n{tail(err)}", pytrace=False)
        time.sleep(0.05)
    _stop(proc)
    pytest.fail(f"tls-echo did not listen within {STARTUP_TIMEOUT:g}s\n{tail(err)}", pytrace=False)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dpuproxy-tls")


@pytest.fixture(scope="session")
def ec_cert(workdir: Path) -> tuple[Path, Path]:
    """EC P-256, made by `dpuproxy gen-cert` (for ECDSA suites and TLS 1.3)."""
    cert, key = workdir / "ec-cert.pem", workdir / "ec-key.pem"
    res = subprocess.run([str(BIN), "gen-cert", "--cert", str(cert), "--key", str(key)], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return cert, key


@pytest.fixture(scope="session")
def rsa_cert(workdir: Path) -> tuple[Path, Path]:
    """RSA 2048 (for ECDHE-RSA suites), made by the openssl CLI."""
    cert, key = workdir / "rsa-cert.pem", workdir / "rsa-key.pem"
    cmd = [
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
        "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return cert, key


@pytest.fixture(scope="session")
def echo_ec(workdir: Path, ec_cert):
    srv = _start(workdir, "echo-ec", *ec_cert)
    yield srv
    _stop(srv.proc)


@pytest.fixture(scope="session")
def echo_rsa(workdir: Path, rsa_cert):
    srv = _start(workdir, "echo-rsa", *rsa_cert)
    yield srv
    _stop(srv.proc)


@pytest.fixture
def echo_fresh(tmp_path: Path, ec_cert):
    """A server of its own, for tests whose client cannot tell its local port (s_client)."""
    srv = _start(tmp_path, "echo", *ec_cert)
    yield srv
    _stop(srv.proc)
