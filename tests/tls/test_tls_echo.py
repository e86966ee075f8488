"""Interop: real clients against `dpuproxy tls-echo` (memory-BIO handshake + our record layer).

- Python `ssl` and `openssl s_client`, each of the six suites forced (TLS 1.3: AES-128-GCM,
  AES-256-GCM, ChaCha20-Poly1305; TLS 1.2: ECDHE-ECDSA with the same three), 1 MiB of
  pseudo-random data each way compared by SHA-256, close_notify both ways;
- client KeyUpdates mid-stream (`openssl s_client` `k` and `K` commands) for each TLS 1.3 suite;
- the ECDHE-RSA TLS 1.2 variants, and a client that negotiates max_fragment_length.

The server's own log line for each connection must agree: version, suite, byte counts,
KeyUpdates received and answered, and a close by close_notify.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MIB = 1 << 20

TLS13 = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
TLS12_ECDSA = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"]
TLS12_RSA = ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"]
SIX = [("1.3", s) for s in TLS13] + [("1.2", s) for s in TLS12_ECDSA]


def expect_clean(log: dict[str, str], version: str, suite: str, nbytes: int) -> None:
    assert log["version"] == f"TLSv{version}", log
    assert log["suite"] == suite, log
    assert int(log["bytes_in"]) == nbytes and int(log["bytes_out"]) == nbytes, log
    assert log["end"] == "close_notify", log
    assert log["error_kind"] == "", log
    # Sequence numbers at hand-over: TLS 1.3 server tickets (OpenSSL sends 2), TLS 1.2 Finished.
    assert (log["start_seq_tx"], log["start_seq_rx"]) == (("2", "0") if version == "1.3" else ("1", "1")), log


# ---------------------------------------------------------------------------- Python ssl


def run_python(server, tmp_path: Path, version: str, suite: str, nbytes: int = MIB) -> dict:
    env = dict(os.environ)
    args = [sys.executable, str(HERE / "py_client.py"), "--port", str(server.port), "--cafile", server.cafile]
    args += ["--tls", version, "--nbytes", str(nbytes), "--seed", str(zlib.crc32(suite.encode()) % 10_000)]
    if version == "1.2":
        args += ["--cipher", suite]
    else:
        # Python has no API for TLS 1.3 ciphersuites; OpenSSL's config file does it.
        conf = tmp_path / "openssl.cnf"
        conf.write_text(
            "openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n"
            "[ssl_sect]\nsystem_default = system_default_sect\n"
            f"[system_default_sect]\nCiphersuites = {suite}\n"
        )
        env["OPENSSL_CONF"] = str(conf)
    res = subprocess.run(args, capture_output=True, timeout=90, env=env)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return json.loads(res.stdout)


@pytest.mark.parametrize("version,suite", SIX, ids=[s for _, s in SIX])
def test_python_ssl(echo_ec, tmp_path, version, suite):
    out = run_python(echo_ec, tmp_path, version, suite)
    assert out["version"] == f"TLSv{version}"
    assert out["cipher"] == suite, "the suite was not forced"
    assert out["received"] == out["sent"] == MIB
    assert out["received_sha256"] == out["sent_sha256"]
    expect_clean(echo_ec.connection_log(out["local_port"]), version, suite, MIB)


@pytest.mark.parametrize("suite", TLS12_RSA)
def test_python_ssl_rsa(echo_rsa, tmp_path, suite):
    out = run_python(echo_rsa, tmp_path, "1.2", suite, nbytes=256 * 1024)
    assert out["cipher"] == suite
    assert out["received_sha256"] == out["sent_sha256"]
    expect_clean(echo_rsa.connection_log(out["local_port"]), "1.2", suite, 256 * 1024)


# ---------------------------------------------------------------------------- openssl s_client


class SClient:
    """`openssl s_client` with stdout and stderr read by threads, every wait bounded."""

    def __init__(self, server, version: str, suite: str, *, commands: bool, extra: list[str] = ()):
        args = ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-servername", "localhost"]
        args += ["-CAfile", server.cafile, "-verify_return_error", "-verify_hostname", "localhost"]
        # -quiet turns on -ign_eof, which also turns off the command letters; undo that.
        args += ["-quiet", "-no_ign_eof"]
        if not commands:
            args += ["-nocommands"]
        args += ["-tls1_3", "-ciphersuites", suite] if version == "1.3" else ["-tls1_2", "-cipher", suite]
        args += list(extra)
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        self.out = bytearray()
        self.err = bytearray()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _pump(self, f, buf: bytearray) -> None:
        while True:
            b = os.read(f.fileno(), 65536)
            if not b:
                return
            with self.lock:
                buf.extend(b)

    def wait_for(self, what: str, cond, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if cond():
                    return
            if self.proc.poll() is not None:
                with self.lock:
                    if cond():
                        return
                break
            time.sleep(0.01)
        self.kill()
        pytest.fail(f"s_client: no {what} (exit {self.proc.poll()})\nstderr: {self.err.decode(errors='replace')}")

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30.0) -> int:
        """Close stdin: s_client sends close_notify and exits."""
        self.proc.stdin.close()
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("s_client did not exit after stdin closed")
        for t in self.threads:
            t.join(timeout=5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=5)


@pytest.mark.parametrize("version,suite", SIX, ids=[s for _, s in SIX])
def test_s_client(echo_fresh, version, suite):
    data = random.Random(suite).randbytes(MIB)
    c = SClient(echo_fresh, version, suite, commands=False)
    try:
        writer = threading.Thread(target=lambda: [c.write(data[i : i + 16384]) for i in range(0, MIB, 16384)])
        writer.start()
        c.wait_for("1 MiB of echo", lambda: len(c.out) >= MIB, timeout=60)
        writer.join(timeout=30)
        assert c.finish() == 0, c.err.decode(errors="replace")
    finally:
        c.kill()
    assert len(c.out) == MIB
    assert hashlib.sha256(c.out).hexdigest() == hashlib.sha256(data).hexdigest()
    expect_clean(echo_fresh.connection_log(), version, suite, MIB)


@pytest.mark.parametrize("suite", TLS13)
def test_s_client_key_update_mid_stream(echo_fresh, suite):
    """`k` (update_not_requested) and `K` (update_requested) between 1 MiB of data each way.

    Command letters only work at the start of a read from stdin, so each command is written
    alone, after the previous data has come back, and data resumes once s_client says KEYUPDATE.
    Data is hex text, so no chunk can start with a command letter by chance.
    """
    rng = random.Random(suite)
    parts = [(rng.randbytes(180 * 1024).hex() + "\n").encode() for _ in range(3)]
    c = SClient(echo_fresh, "1.3", suite, commands=True)
    sent = bytearray()
    try:
        for i, part in enumerate(parts):
            c.write(part)
            sent += part
            c.wait_for(f"echo of part {i}", lambda: len(c.out) >= len(sent))
            if i < 2:
                letter = b"k\n" if i == 0 else b"K\n"
                n = c.err.count(b"KEYUPDATE")
                c.write(letter)
                c.wait_for("KEYUPDATE", lambda: c.err.count(b"KEYUPDATE") > n)
        assert c.finish() == 0, c.err.decode(errors="replace")
    finally:
        c.kill()
    assert bytes(c.out) == bytes(sent)
    assert len(sent) > MIB
    log = echo_fresh.connection_log()
    expect_clean(log, "1.3", suite, len(sent))
    # Two updates received; the requested one answered by exactly one of ours.
    assert (log["key_updates_rx"], log["key_updates_tx"]) == ("2", "1"), log


@pytest.mark.parametrize("version,suite", [("1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"), ("1.3", "TLS_CHACHA20_POLY1305_SHA256")])
def test_s_client_max_fragment_length(echo_fresh, version, suite):
    """A client that negotiated 512-byte fragments rejects bigger records (record_overflow)."""
    data = random.Random(7).randbytes(64 * 1024)
    c = SClient(echo_fresh, version, suite, commands=False, extra=["-maxfraglen", "512"])
    try:
        c.write(data)
        c.wait_for("echo", lambda: len(c.out) >= len(data))
        assert c.finish() == 0, c.err.decode(errors="replace")
    finally:
        c.kill()
    assert bytes(c.out) == data
    log = echo_fresh.connection_log()
    expect_clean(log, version, suite, len(data))
    assert int(log["records_out"]) >= len(data) // 512, log


def test_not_tls_is_refused_cleanly(echo_ec):
    """Plain HTTP instead of a ClientHello: the server logs a handshake failure and closes."""
    import socket

    with socket.create_connection(("127.0.0.1", echo_ec.port), timeout=10) as s:
        port = s.getsockname()[1]
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        while s.recv(4096):
            pass
    # ctl/src/tls_echo.rs: "... tls-echo handshake failed conn=<n> peer=127.0.0.1:<port> error=..."
    line = re.compile(rf"tls-echo handshake failed\b.*\bpeer=127\.0\.0\.1:{port}(?:\s|$)", re.MULTILINE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if line.search(echo_ec.log_text()):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"no handshake-failure log line for peer port {port}\n{echo_ec.log_text()[-3000:]}")
    assert echo_ec.proc.poll() is None, "the server must survive bad input"
