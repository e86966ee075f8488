"""Python `ssl` client for the tls-echo interop tests (run as a subprocess so that
OPENSSL_CONF, which is the only way to pick TLS 1.3 ciphersuites from Python, applies).

Sends N pseudo-random bytes in 64 KiB steps, reading each step's echo before the next,
then unwrap()s: close_notify both ways. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import ssl
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--tls", choices=["1.2", "1.3"], required=True)
    ap.add_argument("--cipher", help="TLS 1.2 cipher (OpenSSL name)")
    ap.add_argument("--nbytes", type=int, default=1 << 20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(a.cafile)
    v = ssl.TLSVersion.TLSv1_2 if a.tls == "1.2" else ssl.TLSVersion.TLSv1_3
    ctx.minimum_version = ctx.maximum_version = v
    if a.cipher:
        ctx.set_ciphers(a.cipher)

    data = random.Random(a.seed).randbytes(a.nbytes)
    raw = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout)
    ss = ctx.wrap_socket(raw, server_hostname="localhost")
    out = {"version": ss.version(), "cipher": ss.cipher()[0], "local_port": ss.getsockname()[1]}
    got = bytearray()
    step = 64 * 1024
    for off in range(0, len(data), step):
        chunk = data[off : off + step]
        ss.sendall(chunk)
        want = len(got) + len(chunk)
        while len(got) < want:
            b = ss.recv(want - len(got))
            if not b:
                raise SystemExit(f"server closed after {len(got)} bytes")
            got += b
    ss.unwrap()  # sends close_notify and waits for the server's
    raw.close()
    out.update(
        sent=len(data),
        received=len(got),
        sent_sha256=hashlib.sha256(data).hexdigest(),
        received_sha256=hashlib.sha256(got).hexdigest(),
        unwrapped=True,
    )
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
