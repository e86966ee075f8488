"""Namespace topology, processes and proxy control for the dpdk-mode end-to-end tests.

One topology per pytest process (names carry its pid):

    root namespace                               netns dpx<pid>
    +---------------------------+               +----------------------------------+
    | dpuproxy --mode dpdk      |               | dpx<pid>b  10.77.<n>.2/24        |
    |   af_packet on dpx<pid>a -+---- veth -----+   3 MCP SDK backends :9001-9003  |
    |   (no kernel IP on it)    |               |   clients (SDK, curl, openssl)   |
    |   answers 10.77.<n>.1     |               |                                  |
    | admin 127.0.0.1:<port>    |               |                                  |
    +---------------------------+               +----------------------------------+

n = pid % 200 + 20. Everything started here is remembered in a registry and torn down by the
fixtures' finalizers and, as a last resort, by an atexit hook (processes in the namespace, the
veth, the namespace). Every wait is bounded.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mcp_helpers import BACKEND_NAMES
from proc_helpers import REPO, kill_hard, require_proxy_binary, strip_ansi, tail

BACKEND_SCRIPT = REPO / "scripts" / "mcp_backend.py"
DEMO_SCRIPT = REPO / "scripts" / "mcp_client_demo.py"
NS_CLIENT = Path(__file__).resolve().parent / "ns_client.py"
PYTHON = sys.executable  # the venv interpreter (it has mcp, httpx2, ...)

BACKEND_PORTS = (9001, 9002, 9003)
PROXY_PORT = 8443


def fail(msg: str) -> None:
    """pytest.fail without the traceback, and without "During handling of the above exception"
    when called from an except block."""
    import pytest

    raise pytest.fail.Exception(msg, pytrace=False) from None


def sh(args: list[str], timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)} -> {res.returncode}: {res.stderr.strip() or res.stdout.strip()}")
    return res


# ---------------------------------------------------------------------------- registry + atexit

_REGISTRY_LOCK = threading.Lock()
_PROCS: list[subprocess.Popen] = []
_TOPOS: list["Topology"] = []


def register(proc: subprocess.Popen) -> subprocess.Popen:
    with _REGISTRY_LOCK:
        _PROCS.append(proc)
    return proc


def _cleanup_everything() -> None:
    with _REGISTRY_LOCK:
        procs, topos = list(_PROCS), list(_TOPOS)
    for p in procs:
        try:
            kill_hard(p)
        except Exception:
            pass
    for t in topos:
        try:
            t.destroy()
        except Exception:
            pass


atexit.register(_cleanup_everything)


def install_sigterm_cleanup() -> None:
    """A SIGTERM to pytest (CI timeout, Ctrl-\\ of a wrapper) unwinds like Ctrl-C, so fixture
    finalizers and the atexit hook still remove the namespace and the processes."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, on_term)


# ---------------------------------------------------------------------------- environment check


def environment_problem() -> str | None:
    """Why this machine cannot run the suite, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, af_packet, hugepages)"
    for tool in ("ip", "ethtool", "ping", "curl", "openssl"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command is missing (apt-get install iproute2 ethtool iputils-ping curl openssl)"
    try:
        res = sh(["ip", "netns", "list"], check=False, timeout=10)
    except Exception as e:  # noqa: BLE001
        return f"`ip netns list` failed: {e}"
    if res.returncode != 0:
        return f"`ip netns` is unavailable: {res.stderr.strip()}"
    return None


def require_dpdk() -> bool:
    return os.environ.get("DPUPROXY_REQUIRE_DPDK") == "1"


def suite_mode() -> str:
    """dpdk (default), or kernel: run the same suite against `--mode kernel` with 10.77.<n>.1 put
    on the root-namespace veth end, to check the harness itself without the DPDK path."""
    mode = os.environ.get("DPUPROXY_DPDK_SUITE_MODE", "dpdk")
    if mode not in ("dpdk", "kernel"):
        raise ValueError(f"DPUPROXY_DPDK_SUITE_MODE must be dpdk or kernel, not {mode!r}")
    return mode


# ---------------------------------------------------------------------------- topology


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# Every process this suite starts inherits this marker (the owning pytest's pid), so a later run
# can find and end what a SIGKILLed run left behind, and nothing else.
OWNER_ENV = "DPUPROXY_DPDK_SUITE_OWNER"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env[OWNER_ENV] = str(os.getpid())
    return env


def _orphans() -> list[int]:
    """Processes started by a dpdk suite run whose pytest is gone."""
    found = []
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        for var in env.split(b"\0"):
            if var.startswith(OWNER_ENV.encode() + b"="):
                try:
                    owner = int(var.split(b"=", 1)[1])
                except ValueError:
                    break
                if owner != me and not _pid_alive(owner):
                    found.append(int(d.name))
                break
    return found


def remove_stale_topologies() -> list[str]:
    """What a run whose pytest is gone (SIGKILL) left: its processes (the proxy, backends,
    clients, found by their OWNER_ENV marker), namespaces dpx<pid> and veths dpx<pid>a."""
    removed = []
    for pid in _orphans():
        try:
            os.kill(pid, signal.SIGKILL)
            removed.append(f"pid {pid}")
        except (ProcessLookupError, PermissionError):
            pass
    res = sh(["ip", "netns", "list"], check=False)
    for line in res.stdout.splitlines():
        m = re.match(r"^dpx(\d+)(m?)\b", line.strip())
        if not m or _pid_alive(int(m.group(1))):
            continue
        ns = f"dpx{m.group(1)}{m.group(2)}"
        _kill_ns_pids(ns)
        sh(["ip", "link", "del", f"{ns}a"], check=False)
        sh(["ip", "netns", "del", ns], check=False)
        removed.append(ns)
    return removed


def _kill_ns_pids(ns: str) -> None:
    res = sh(["ip", "netns", "pids", ns], check=False)
    for tok in res.stdout.split():
        try:
            os.kill(int(tok), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


@dataclasses.dataclass
class Topology:
    pid: int
    n: int
    ns: str
    veth_root: str  # DPDK's end (af_packet), root namespace, no IP
    veth_ns: str  # the kernel end inside the namespace
    proxy_ip: str  # 10.77.<n>.1
    ns_ip: str  # 10.77.<n>.2
    _up: bool = False

    @classmethod
    def for_this_process(cls) -> "Topology":
        pid = os.getpid()
        n = pid % 200 + 20
        ns = f"dpx{pid}"
        return cls(pid, n, ns, f"{ns}a", f"{ns}b", f"10.77.{n}.1", f"10.77.{n}.2")

    def _register(self) -> None:
        """From here on destroy() (and the atexit hook) clean up whatever exists."""
        with _REGISTRY_LOCK:
            _TOPOS.append(self)
        self._up = True

    def create(self, kernel_ip_on_root: bool = False) -> None:
        """kernel_ip_on_root (suite mode "kernel"): put proxy_ip on veth_root for a kernel-mode proxy."""
        self._register()
        # Leftovers of an earlier run of this very pid (pid reuse) would make `add` fail.
        sh(["ip", "link", "del", self.veth_root], check=False)
        sh(["ip", "netns", "del", self.ns], check=False)
        sh(["ip", "netns", "add", self.ns])
        sh(["ip", "link", "add", self.veth_root, "type", "veth", "peer", "name", self.veth_ns, "netns", self.ns])
        # Root end: DPDK's. No IPv6 chatter, never forwarded by this kernel (10.77.x is not a
        # destination that may leave the machine), tx checksum offload off (harmless).
        for key, val in (("net.ipv6.conf.{}.disable_ipv6", "1"), ("net.ipv4.conf.{}.forwarding", "0")):
            sh(["sysctl", "-q", "-w", f"{key.format(self.veth_root)}={val}"], check=False)
        sh(["ethtool", "-K", self.veth_root, "tx", "off"], check=False)
        if kernel_ip_on_root:
            sh(["ip", "addr", "add", f"{self.proxy_ip}/24", "dev", self.veth_root])
        sh(["ip", "link", "set", self.veth_root, "up"])
        # Namespace end: the backends' and clients' address; tx checksum offload OFF, else the
        # kernel sends TCP with partial checksums that DPDK (af_packet) sees as bad.
        self.nsh(["sysctl", "-q", "-w", f"net.ipv6.conf.{self.veth_ns}.disable_ipv6=1"], check=False)
        self.nsh(["ip", "addr", "add", f"{self.ns_ip}/24", "dev", self.veth_ns])
        self.nsh(["ethtool", "-K", self.veth_ns, "tx", "off"])
        self.nsh(["ip", "link", "set", self.veth_ns, "up"])
        self.nsh(["ip", "link", "set", "lo", "up"])

    def destroy(self) -> None:
        if not self._up:
            return
        self._up = False
        _kill_ns_pids(self.ns)
        sh(["ip", "link", "del", self.veth_root], check=False)
        sh(["ip", "netns", "del", self.ns], check=False)

    # -- running things inside the namespace

    def ns_cmd(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def nsh(self, args: list[str], timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
        return sh(self.ns_cmd(args), timeout=timeout, check=check)

    def ns_run(
        self, args: list[str], timeout: float, input: bytes | str | None = None, text: bool = True
    ) -> subprocess.CompletedProcess:
        """Run to completion inside the namespace; on timeout the whole process group is
        killed and subprocess.TimeoutExpired (with the output so far) is raised."""
        proc = register(
            subprocess.Popen(
                self.ns_cmd(args),
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=text,
                start_new_session=True,
                env=child_env(),
            )
        )
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            kill_hard(proc)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(e.cmd, timeout, output=out, stderr=err) from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def ns_popen(self, args: list[str], **kw: Any) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        return register(subprocess.Popen(self.ns_cmd(args), start_new_session=True, env=child_env(), **kw))

    def ping_ok(self, ip: str) -> bool:
        try:
            return self.nsh(["ping", "-n", "-c1", "-W1", ip], timeout=5, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def tcp_connect_ok(self, ip: str, port: int) -> tuple[bool, str]:
        code = (
            "import socket,sys\n"
            f"s=socket.create_connection(({ip!r},{port}),timeout=2)\n"
            "s.close()\n"
        )
        try:
            res = self.nsh([PYTHON, "-c", code], timeout=10, check=False)
        except subprocess.TimeoutExpired:
            return False, "timed out"
        return res.returncode == 0, (res.stderr.strip().splitlines() or [""])[-1]


@dataclasses.dataclass
class TapTopology(Topology):
    """The multi-lcore picture: the proxy itself runs INSIDE netns dpx<pid>m and drives a
    multi-queue tap (net_tap, one queue pair per lcore) that DPDK creates there; the kernel end of
    that tap carries 10.79.<n>.2 for the backends and clients in the same namespace. (A tap
    cannot be handed to another namespace while DPDK holds its queues, so the kernel peers live
    beside the proxy instead of across a veth.) The tap disappears with the proxy process."""

    @classmethod
    def for_this_process(cls) -> "TapTopology":
        pid, n = os.getpid(), os.getpid() % 200 + 20
        return cls(pid, n, f"dpx{pid}m", f"dpx{pid}t", f"dpx{pid}t", f"10.79.{n}.1", f"10.79.{n}.2")

    def create(self, kernel_ip_on_root: bool = False) -> None:
        self._register()
        sh(["ip", "netns", "del", self.ns], check=False)
        sh(["ip", "netns", "add", self.ns])
        self.nsh(["ip", "link", "set", "lo", "up"])

    def configure_tap(self, deadline: float) -> None:
        """Once DPDK has created the tap: the kernel end's address, no IPv6 chatter, tx
        checksum offload off, up. Bounded by `deadline`."""
        while self.nsh(["ip", "link", "show", self.veth_ns], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"tap {self.veth_ns} never appeared in netns {self.ns}")
            time.sleep(0.1)
        self.nsh(["sysctl", "-q", "-w", f"net.ipv6.conf.{self.veth_ns}.disable_ipv6=1"], check=False)
        self.nsh(["ip", "addr", "add", f"{self.ns_ip}/24", "dev", self.veth_ns])
        self.nsh(["ethtool", "-K", self.veth_ns, "tx", "off"], check=False)
        self.nsh(["ip", "link", "set", self.veth_ns, "up"])

    def destroy(self) -> None:
        if not self._up:
            return
        self._up = False
        _kill_ns_pids(self.ns)
        sh(["ip", "netns", "del", self.ns], check=False)


@contextlib.contextmanager
def built(t: Topology, **create_args: Any):
    """Create `t`, yield it, destroy it (also when creation fails half-way: then the test fails
    with the reason)."""
    try:
        t.create(**create_args)
    except Exception as e:
        t.destroy()
        fail(f"could not build the namespace topology {t.ns}: {e}")
    try:
        yield t
    finally:
        t.destroy()


# ---------------------------------------------------------------------------- backends


@dataclasses.dataclass
class NsBackend:
    name: str
    ip: str
    port: int
    proc: subprocess.Popen
    stdout: Path
    stderr: Path

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"


def start_backends(topo: Topology, workdir: Path, timeout: float = 30.0) -> list[NsBackend]:
    """3 MCP SDK backends inside the namespace; waits for each one's READY line."""
    started: list[NsBackend] = []
    for name, port in zip(BACKEND_NAMES, BACKEND_PORTS):
        out, err = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            # --allow-any-host: the proxy forwards the client's Host (10.77.<n>.1:8443). The SDK
            # turns its DNS-rebinding check on only for 127.0.0.1/localhost binds, so this is
            # belt and braces, and keeps the suite independent of that SDK default.
            proc = topo.ns_popen(
                [PYTHON, str(BACKEND_SCRIPT), "--host", topo.ns_ip, "--port", str(port), "--name", name,
                 "--allow-any-host"],  # fmt: skip
                stdout=fo,
                stderr=fe,
            )
        started.append(NsBackend(name, topo.ns_ip, port, proc, out, err))
    deadline = time.monotonic() + timeout
    for b in started:
        while True:
            if b.stdout.exists() and f"READY {b.name} {b.port}" in b.stdout.read_text(errors="replace"):
                break
            rc = b.proc.poll()
            if rc is not None:
                raise RuntimeError(f"backend {b.name} exited with {rc} before READY:\n{tail(b.stderr)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"backend {b.name} not READY within {timeout:g}s:\n{tail(b.stderr)}")
            time.sleep(0.05)
    return started


# ---------------------------------------------------------------------------- proxy


def proxy_binary() -> str:
    """The proxy binary; FileNotFoundError / PermissionError if it is missing or not executable."""
    return str(require_proxy_binary())


def eal_args(iface: str, driver: str = "af_packet") -> str:
    return f"-l 1 --in-memory --no-telemetry --iova-mode=va --no-pci --vdev=net_{driver}0,iface={iface}"


class ProxyTarget:
    """What a client in the namespace needs to reach the proxy: the topology, the URL, the CA
    file and the bearer token (the curl helpers of http_raw.py take one of these)."""

    def __init__(self, topo: Topology, cafile: str, token: str):
        self.topo, self.cafile, self.token = topo, cafile, token
        self.url = f"https://{topo.proxy_ip}:{PROXY_PORT}/mcp"


_ACTIVE_DPDK: list["ProxyRun"] = []


@dataclasses.dataclass
class ProxyRun:
    cmd: list[str]
    proc: subprocess.Popen
    stdout: Path
    stderr: Path
    admin_url: str | None
    mode: str

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_text(self) -> str:
        return strip_ansi(self.stderr.read_bytes().decode("utf-8", "replace")) if self.stderr.exists() else ""

    def terminate(self, timeout: float = 10.0) -> tuple[int | None, float]:
        """SIGTERM the proxy itself; returns (exit status or None if it did not exit, seconds).
        A proxy that does not exit in time is SIGKILLed (status None is returned)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_hard(self.proc)
                self._release()
                return None, time.monotonic() - t0
        self._release()
        return self.proc.returncode, time.monotonic() - t0

    def _release(self) -> None:
        if self in _ACTIVE_DPDK:
            _ACTIVE_DPDK.remove(self)


def launch(cmd: list[str], workdir: Path, name: str, mode: str, admin_url: str | None) -> ProxyRun:
    """Start a proxy (root namespace). At most one that may start the EAL runs at a time."""
    live = [p for p in _ACTIVE_DPDK if p.alive()]
    if live and mode in ("dpdk", "auto"):
        raise RuntimeError(
            f"another DPDK proxy is still running ({shlex.join(live[0].cmd)}); only one may hold lcore 1"
        )
    out, err = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
    (workdir / f"{name}.cmd").write_text(shlex.join(cmd) + "\n")
    env = child_env()
    env.setdefault("NO_COLOR", "1")
    env.setdefault("RUST_BACKTRACE", "0")
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = register(
            subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, start_new_session=True, env=env)
        )
    run = ProxyRun(cmd, proc, out, err, admin_url, mode)
    if mode in ("dpdk", "auto"):
        _ACTIVE_DPDK.append(run)
    return run


def wait_tcp_local(port: int, run: ProxyRun, what: str, deadline: float) -> None:
    while True:
        rc = run.proc.poll()
        if rc is not None:
            raise RuntimeError(f"{what}: the proxy exited with status {rc} first\n{tail(run.stderr)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: 127.0.0.1:{port} not accepting in time\n{tail(run.stderr)}")
        time.sleep(0.05)


def wait_proxy_reachable(topo: Topology, run: ProxyRun, port: int, deadline: float) -> None:
    """From inside the namespace: ping 10.77.<n>.1, then a TCP connect to it."""
    stage, last = "ping", ""
    while True:
        rc = run.proc.poll()
        if rc is not None:
            raise RuntimeError(f"the proxy exited with status {rc} while waiting for {stage}\n{tail(run.stderr)}")
        if stage == "ping":
            if topo.ping_ok(topo.proxy_ip):
                stage = "tcp"
                continue
        else:
            ok, last = topo.tcp_connect_ok(topo.proxy_ip, port)
            if ok:
                return
        if time.monotonic() > deadline:
            detail = f" (last error: {last})" if last else ""
            raise RuntimeError(
                f"from netns {topo.ns}: {'ping' if stage == 'ping' else 'TCP connect to'} "
                f"{topo.proxy_ip}{'' if stage == 'ping' else f':{port}'} never succeeded{detail}\n{tail(run.stderr)}"
            )
        time.sleep(0.2)
