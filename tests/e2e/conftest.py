"""Fixtures for dpuproxy end-to-end tests: 3 real MCP backends, a self-signed cert, the proxy.

Environment knobs (all optional):

  DPUPROXY_BIN          proxy binary (default <repo>/target/debug/dpuproxy).
  DPUPROXY_MODE         value for --mode (default: kernel).
  DPUPROXY_WORKERS      value for --workers (default: 2).
  DPUPROXY_EXTRA_ARGS   extra arguments appended to the proxy command line (shell-split).
  DPUPROXY_STARTUP_TIMEOUT  seconds to wait for proxy/backends to listen (default 20).
  DPUPROXY_EXPECT_KTLS  "0"/"1": expected value of dpuproxy_ktls_available. Default: probed
                        on this machine (setsockopt(TCP_ULP, "tls") on a loopback socket).

If the proxy binary is missing every test fails (it does not skip) and says how to build it.
On a failing test the tail of the proxy's stderr is attached to the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp_helpers import BACKEND_NAMES
from proc_helpers import REPO, free_port, require_proxy_binary, self_signed_cert, stop_process, tail

BACKEND_SCRIPT = REPO / "scripts" / "mcp_backend.py"
STARTUP_TIMEOUT = float(os.environ.get("DPUPROXY_STARTUP_TIMEOUT", "20"))

_PROXY_STDERR: Path | None = None


# ---------------------------------------------------------------------------- helpers


def wait_for_port(port: int, proc: subprocess.Popen, what: str, logs: list[Path], timeout: float) -> None:
    """Poll until 127.0.0.1:port accepts a TCP connection; fail fast if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            out = "\n".join(f"--- {p.name} ---\n{tail(p)}" for p in logs)
            pytest.fail(f"{what} exited with status {rc} before listening on port {port}\n{out}", pytrace=False)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    out = "\n".join(f"--- {p.name} ---\n{tail(p)}" for p in logs)
    pytest.fail(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g}s\n{out}", pytrace=False)


def kernel_tls_available() -> bool:
    """Ground truth for kTLS: can a connected loopback TCP socket take the "tls" ULP?"""
    tcp_ulp = getattr(socket, "TCP_ULP", 31)
    ls = socket.socket()
    try:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        c = socket.create_connection(ls.getsockname(), timeout=2)
        s, _ = ls.accept()
        try:
            c.setsockopt(socket.IPPROTO_TCP, tcp_ulp, b"tls")
            return True
        except OSError:
            return False
        finally:
            c.close()
            s.close()
    finally:
        ls.close()


# ---------------------------------------------------------------------------- fixtures


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    port: int

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


@dataclasses.dataclass(frozen=True)
class Proxy:
    url: str  # https://127.0.0.1:<p>/mcp
    port: int
    admin_url: str  # http://127.0.0.1:<a>
    cafile: str
    backends: tuple[Backend, ...]
    stderr_path: Path
    proc: Any = dataclasses.field(default=None, compare=False, repr=False)  # its subprocess.Popen (signals)

    def backend_by_name(self, name: str) -> Backend:
        for b in self.backends:
            if b.name == name:
                return b
        raise KeyError(name)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dpuproxy-e2e")


@pytest.fixture(scope="session")
def backends(workdir: Path):
    started: list[tuple[subprocess.Popen, Backend]] = []
    try:
        for name in BACKEND_NAMES:
            port = free_port()
            out, err = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
            with open(out, "wb") as fo, open(err, "wb") as fe:
                proc = subprocess.Popen(
                    [sys.executable, str(BACKEND_SCRIPT), "--host", "127.0.0.1", "--port", str(port), "--name", name],
                    stdin=subprocess.DEVNULL,
                    stdout=fo,
                    stderr=fe,
                    start_new_session=True,
                )
            started.append((proc, Backend(name, port)))
        for proc, b in started:
            wait_for_port(
                b.port, proc, f"backend {b.name}", [workdir / f"{b.name}.stderr"], STARTUP_TIMEOUT
            )
        yield tuple(b for _, b in started)
    finally:
        for proc, _ in started:
            stop_process(proc)


@pytest.fixture(scope="session")
def tls_cert(workdir: Path) -> tuple[str, str]:
    try:
        sans = ["IP:127.0.0.1", "DNS:localhost"]
        return self_signed_cert(workdir / "cert.pem", workdir / "key.pem", "localhost", sans)
    except FileNotFoundError:
        pytest.fail("the openssl CLI is needed to make the test certificate (apt-get install openssl)", pytrace=False)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


def proxy_binary() -> list[str]:
    try:
        return [str(require_proxy_binary())]
    except (FileNotFoundError, PermissionError) as e:
        pytest.fail(f"{e}. These end-to-end tests need the real proxy; they do not skip without it.", pytrace=False)


@contextlib.contextmanager
def launch_proxy(
    workdir: Path,
    backends: tuple[Backend, ...],
    tls_cert: tuple[str, str],
    extra_args: list[str] | tuple[str, ...] = (),
    name: str = "dpuproxy",
    backend_flags: bool = True,
    nofile: tuple[int, int] | None = None,
) -> Iterator[Proxy]:
    """Start one dpuproxy (kernel mode by default) in front of `backends`; stop it on exit.

    `extra_args` go after the standard arguments (and before DPUPROXY_EXTRA_ARGS); without
    `backend_flags` the backend list must come from a --config file among them; `nofile` starts
    it with that (soft, hard) open-file limit. Logs and the command line land in
    workdir/<name>.{stdout,stderr,cmd}."""
    cert, key = tls_cert
    port, admin = free_port(), free_port()
    while admin == port:
        admin = free_port()
    cmd = proxy_binary() + [
        "run",
        "--mode", os.environ.get("DPUPROXY_MODE", "kernel"),
        "--listen", f"127.0.0.1:{port}",
    ]  # fmt: skip
    for b in backends if backend_flags else ():
        cmd += ["--backend", b.addr]
    cmd += [
        "--tls-cert", cert,
        "--tls-key", key,
        "--workers", os.environ.get("DPUPROXY_WORKERS", "2"),
        "--admin", f"127.0.0.1:{admin}",
    ]  # fmt: skip
    cmd += list(extra_args)
    cmd += shlex.split(os.environ.get("DPUPROXY_EXTRA_ARGS", ""))
    stderr_path = workdir / f"{name}.stderr"
    stdout_path = workdir / f"{name}.stdout"
    (workdir / f"{name}.cmd").write_text(shlex.join(cmd) + "\n")
    with open(stdout_path, "wb") as fo, open(stderr_path, "wb") as fe:
        limit = None
        if nofile is not None:
            import resource

            def limit() -> None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, start_new_session=True, preexec_fn=limit
        )
    try:
        logs = [stderr_path, stdout_path]
        wait_for_port(port, proc, f"{name} ({shlex.join(cmd)})", logs, STARTUP_TIMEOUT)
        wait_for_port(admin, proc, f"{name} admin endpoint", logs, STARTUP_TIMEOUT)
        yield Proxy(
            url=f"https://127.0.0.1:{port}/mcp",
            port=port,
            admin_url=f"http://127.0.0.1:{admin}",
            cafile=cert,
            backends=backends,
            stderr_path=stderr_path,
            proc=proc,
        )
    finally:
        stop_process(proc)
        rc = proc.returncode
        # A crash (signal) during the run is a bug even if every test passed.
        if rc is not None and rc < 0 and rc not in (-signal.SIGTERM, -signal.SIGKILL):
            sys.stderr.write(f"\n[e2e] {name} died from signal {-rc}\n{tail(stderr_path)}\n")


@pytest.fixture(scope="session")
def proxy(workdir: Path, backends: tuple[Backend, ...], tls_cert: tuple[str, str]):
    """The shared proxy: auth off (no --jwt-* flags)."""
    global _PROXY_STDERR
    _PROXY_STDERR = workdir / "dpuproxy.stderr"
    with launch_proxy(workdir, backends, tls_cert, name="dpuproxy") as p:
        yield p


@pytest.fixture(scope="session")
def expect_ktls() -> int:
    forced = os.environ.get("DPUPROXY_EXPECT_KTLS")
    if forced in ("0", "1"):
        return int(forced)
    return int(kernel_tls_available())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    seen: set[Path] = set()
    if _PROXY_STDERR is not None:
        report.sections.append(("dpuproxy stderr (tail)", tail(_PROXY_STDERR)))
        seen.add(_PROXY_STDERR)
    # Other proxies the test used (e.g. the auth-enabled ones of test_auth.py).
    for value in getattr(item, "funcargs", {}).values():
        p = value if isinstance(value, Proxy) else getattr(value, "proxy", None)
        if isinstance(p, Proxy) and p.stderr_path not in seen:
            seen.add(p.stderr_path)
            report.sections.append((f"{p.stderr_path.stem} stderr (tail)", tail(p.stderr_path)))
