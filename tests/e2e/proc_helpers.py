"""Process and file helpers shared by the test suites (tests/e2e, tests/dpdk, tests/tls): free
ports, log tails, stopping process groups, finding the proxy binary, self-signed certificates.

Nothing here calls pytest: each suite wraps these failures its own way (pytest.fail, assert, ...).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def tail(path: Path | None, limit: int = 6000) -> str:
    """The last `limit` bytes of a log file, as text without ANSI colour codes."""
    if path is None or not path.exists():
        return "<no output captured>"
    data = path.read_bytes()[-limit:]
    return strip_ansi(data.decode("utf-8", "replace")) or "<empty>"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_hard(proc: subprocess.Popen) -> None:
    """SIGKILL the process group we made for `proc` (or `proc` alone), and reap it (bounded)."""
    if proc.poll() is not None:
        return
    for target in (lambda: os.killpg(proc.pid, signal.SIGKILL), lambda: proc.kill()):
        try:
            target()
            break
        except (ProcessLookupError, PermissionError):
            continue
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> int | None:
    """SIGTERM the process group we made for `proc` (start_new_session=True), SIGKILL after
    `grace` seconds; returns its exit status (None if even SIGKILL did not end it in 5 s)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            kill_hard(proc)
    return proc.returncode


def require_proxy_binary() -> Path:
    """The proxy binary (DPUPROXY_BIN, else <repo>/target/debug/dpuproxy); FileNotFoundError /
    PermissionError (saying how to build it) if it is missing or not executable."""
    path = Path(os.environ.get("DPUPROXY_BIN") or REPO / "target" / "debug" / "dpuproxy")
    if not path.is_file():
        raise FileNotFoundError(
            f"dpuproxy binary not found at {path} (set DPUPROXY_BIN, or build it: cargo build -p dpuproxy)"
        )
    if not os.access(path, os.X_OK):
        raise PermissionError(f"dpuproxy binary {path} is not executable")
    return path


def self_signed_cert(
    cert: Path, key: Path, cn: str, sans: Sequence[str], newkey: str = "ec", days: int = 2, timeout: float = 30
) -> tuple[str, str]:
    """`openssl req -x509`: a self-signed certificate for `cn` with subjectAltName `sans`
    (e.g. ["IP:127.0.0.1", "DNS:localhost"]). `newkey` is "ec" (P-256) or an openssl -newkey
    value such as "rsa:2048". Returns (cert, key) as strings. Raises FileNotFoundError without
    the openssl CLI and RuntimeError (with openssl's stderr) if it fails."""
    keyspec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if newkey == "ec" else ["-newkey", newkey]
    cmd = [
        "openssl", "req", "-x509", *keyspec, "-nodes", "-keyout", str(key), "-out", str(cert),
        "-days", str(days), "-subj", f"/CN={cn}", "-addext", "subjectAltName=" + ",".join(sans),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"openssl failed ({res.returncode}): {res.stderr.decode(errors='replace')}")
    return str(cert), str(key)
