"""Fixtures for the dpdk-mode end-to-end tests (`dpuproxy run --mode dpdk`). Needs root.

    DPUPROXY_BIN=$PWD/target/debug/dpuproxy .venv/bin/python -m pytest tests/dpdk -v --timeout=300

The proxy runs in the root namespace and drives the root end of a veth pair through DPDK's
af_packet vdev on lcore 1; 3 real MCP SDK backends and every client (the SDK demo client, curl,
openssl s_client) run in a namespace behind the other end (see dpdk_topo.py for the picture).
One topology per session, one DPDK proxy at a time (it owns lcore 1 and hugepages).

Environment:
  DPUPROXY_BIN              proxy binary (default <repo>/target/debug/dpuproxy).
  DPUPROXY_REQUIRE_DPDK     "1" (CI): a machine that cannot run the suite is a failure. Without
                            it a non-root run skips with the reason; as root any missing piece
                            (ip netns, ethtool, curl, openssl) still fails loudly.
  DPUPROXY_DPDK_SUITE_MODE  dpdk (default) or kernel. "kernel" runs the same tests against
                            `--mode kernel --listen 10.77.<n>.1:8443` with that address put on
                            the root veth end: a check of the harness itself, without the DPDK
                            path (the dpdk-only assertions are skipped).
  DPUPROXY_DPDK_STARTUP_TIMEOUT  seconds for the proxy to answer from the namespace (default 30).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "e2e"))

import dpdk_topo as dt  # noqa: E402
from auth_helpers import AUDIENCE, ISSUER, claims, rsa_key, sign  # noqa: E402
from proc_helpers import free_port, self_signed_cert, stop_process  # noqa: E402

REPO = dt.REPO
STARTUP_TIMEOUT = float(os.environ.get("DPUPROXY_DPDK_STARTUP_TIMEOUT", "30"))

_REPORT_FILES: dict[str, Path] = {}  # label -> log file, attached to failing tests' reports


def pytest_configure(config: pytest.Config) -> None:
    dt.install_sigterm_cleanup()


# ---------------------------------------------------------------------------- gate


@pytest.fixture(scope="session", autouse=True)
def dpdk_env() -> str:
    problem = dt.environment_problem()
    if problem:
        if os.geteuid() != 0 and not dt.require_dpdk():
            pytest.skip(f"dpdk-mode e2e suite skipped: {problem} (set DPUPROXY_REQUIRE_DPDK=1 to make this fail)")
        pytest.fail(
            f"dpdk-mode e2e suite cannot run: {problem}"
            + (" (DPUPROXY_REQUIRE_DPDK=1 forbids skipping)" if dt.require_dpdk() else " (running as root)"),
            pytrace=False,
        )
    try:
        dt.proxy_binary()
    except (FileNotFoundError, PermissionError) as e:
        pytest.fail(str(e), pytrace=False)
    return dt.suite_mode()


# ---------------------------------------------------------------------------- session-wide pieces


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dpuproxy-dpdk")


@pytest.fixture(scope="session")
def topo(dpdk_env: str):
    stale = dt.remove_stale_topologies()
    if stale:
        sys.stderr.write(f"\n[dpdk] cleaned up after dead runs: {stale}\n")
    with dt.built(dt.Topology.for_this_process(), kernel_ip_on_root=(dpdk_env == "kernel")) as t:
        yield t


@pytest.fixture(scope="session")
def tls_cert(workdir: Path, topo: dt.Topology) -> tuple[str, str]:
    """Self-signed EC cert whose SAN is the proxy's DPDK address (plus 127.0.0.1 for the
    --mode auto fallback test, which listens on loopback)."""
    sans = [f"IP:{topo.proxy_ip}", "IP:127.0.0.1", "DNS:localhost"]
    try:
        return self_signed_cert(workdir / "cert.pem", workdir / "key.pem", topo.proxy_ip, sans)
    except RuntimeError as e:
        dt.fail(str(e))


class Jwt:
    def __init__(self, workdir: Path) -> None:
        self.key = rsa_key(None)
        self.pub = workdir / "jwtpub.pem"
        self.pub.write_bytes(self.key.public_pem())
        self.token = sign(self.key, "RS256", claims(iss=ISSUER, aud=AUDIENCE, lifetime=3600))

    def args(self) -> list[str]:
        return ["--jwt-key", str(self.pub), "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE]


@pytest.fixture(scope="session")
def jwt_auth(workdir: Path) -> Jwt:
    return Jwt(workdir)


# ---------------------------------------------------------------------------- backends + proxy


@pytest.fixture(scope="module")
def ns_backends(topo: dt.Topology, workdir: Path, request: pytest.FixtureRequest):
    d = workdir / f"backends-{request.module.__name__.rsplit('.', 1)[-1]}"
    d.mkdir(exist_ok=True)
    started: list[dt.NsBackend] = []
    try:
        try:
            started = dt.start_backends(topo, d)
        except RuntimeError as e:
            dt.fail(str(e))
        for b in started:
            _REPORT_FILES[f"backend {b.name} stderr"] = b.stderr
        yield started
    finally:
        for b in started:
            stop_process(b.proc, grace=3)
            _REPORT_FILES.pop(f"backend {b.name} stderr", None)


class DpdkProxy(dt.ProxyTarget):
    """The proxy under test plus what a test needs to talk to it."""

    def __init__(self, run: dt.ProxyRun, topo: dt.Topology, backends: list[dt.NsBackend], cafile: str, jwt: Jwt):
        super().__init__(topo, cafile, jwt.token)
        self.run = run
        self.backends = backends
        self.admin_url = run.admin_url
        self.mode = run.mode

    def backend(self, name: str) -> dt.NsBackend:
        return next(b for b in self.backends if b.name == name)


def dpdk_proxy_cmd(
    topo: dt.Topology,
    backends: list[dt.NsBackend],
    cert: tuple[str, str],
    jwt: Jwt,
    admin: int,
    mode: str,
    driver: str = "af_packet",
    eal: str | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    cmd = [dt.proxy_binary(), "run", "--mode", mode]
    if mode == "dpdk":
        cmd += ["--dpdk-eal", eal or dt.eal_args(topo.veth_root, driver), "--dpdk-ip", f"{topo.proxy_ip}/24"]
    cmd += ["--listen", f"{topo.proxy_ip}:{dt.PROXY_PORT}"]
    for b in backends:
        cmd += ["--backend", b.addr]
    cmd += ["--tls-cert", cert[0], "--tls-key", cert[1], "--admin", f"127.0.0.1:{admin}"]
    if mode == "kernel":
        cmd += ["--workers", "1"]
    cmd += jwt.args()
    cmd += extra or []
    return cmd


@pytest.fixture(scope="session")
def start_proxy(topo, tls_cert, jwt_auth, workdir):
    """start_proxy(backends, name, mode, driver="af_packet", eal=None, extra=None) -> dt.ProxyRun:
    launch a proxy (`eal` replaces the EAL arguments built for `driver`; `extra` are more
    arguments) and
    wait until its admin endpoint listens and the namespace reaches it (fails the test, with the
    proxy stopped, if it does not come up within DPUPROXY_DPDK_STARTUP_TIMEOUT). The caller
    terminates the returned run."""

    def start(
        backends: list[dt.NsBackend],
        name: str,
        mode: str,
        driver: str = "af_packet",
        eal: str | None = None,
        extra: list[str] | None = None,
    ) -> dt.ProxyRun:
        admin = free_port()
        cmd = dpdk_proxy_cmd(topo, backends, tls_cert, jwt_auth, admin, mode, driver, eal, extra)
        run = dt.launch(cmd, workdir, name, mode, f"http://127.0.0.1:{admin}")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        try:
            dt.wait_tcp_local(admin, run, "admin endpoint", deadline)
            dt.wait_proxy_reachable(topo, run, dt.PROXY_PORT, deadline)
        except RuntimeError as e:
            run.terminate(timeout=10)
            dt.fail(f"{name} did not come up ({' '.join(cmd)}):\n{e}")
        return run

    return start


@pytest.fixture(scope="module")
def dpdk_proxy(topo, ns_backends, tls_cert, jwt_auth, dpdk_env, start_proxy, request: pytest.FixtureRequest):
    mode = dpdk_env  # "dpdk", or "kernel" for the harness self-check
    run = start_proxy(ns_backends, f"dpuproxy-{request.module.__name__.rsplit('.', 1)[-1]}", mode)
    _REPORT_FILES["dpuproxy stderr"] = run.stderr
    try:
        yield DpdkProxy(run, topo, ns_backends, tls_cert[0], jwt_auth)
    finally:
        if run.alive():
            rc, secs = run.terminate(timeout=10)
            if rc != 0:
                sys.stderr.write(f"\n[dpdk] proxy teardown: exit status {rc} after {secs:.1f}s\n{dt.tail(run.stderr)}\n")


# ---------------------------------------------------------------------------- reports


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for label, path in list(_REPORT_FILES.items()):
        report.sections.append((f"{label} (tail)", dt.tail(path, 4000)))
