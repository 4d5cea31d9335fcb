"""The GCS baseline: the official client uploading bodies to the emulator, no hookline.

    python bench/gcs_raw.py --url http://127.0.0.1:PORT --bucket NAME [--mode M]
                            [--count N] [--threads N] [--size BYTES] [--chunk-size BYTES]

``bench/gcs.py`` runs it as its own process on the receiver's core, between the
receiver's rounds, for ``gcs_raw``: what ``google-cloud-storage`` alone achieves
with the same bodies, the same emulator and the same concurrency (``--threads``
uploads in flight, as the receiver's ``HOOKLINE_GCS_THREADS``). It imports nothing
of hookline and sets the client up as ``hookline.gcs`` does (anonymous credentials,
one pooled connection per thread, the environment read once, the same retry,
timeout and ``ifGenerationMatch=0``). Run by hand, ``--mode`` compares the
client's upload paths:

* ``multipart``: ``Blob.upload_from_string``. For a body of known length up to
  8 MiB the client sends one ``uploadType=multipart`` request (metadata and bytes).
* ``resumable``: ``BlobWriter``, the client's streaming upload: one request to
  open a session, one ``PUT`` per chunk, and one more (empty) ``PUT`` when the
  body is an exact multiple of the chunk size.
* ``media``: one bare ``uploadType=media`` ``POST`` through the same
  ``requests`` session, without the client's upload code: what the protocol costs
  without the library.

Prints one JSON line: uploads/s, the process's CPU per upload (and the emulator's,
given ``--emulator-pid``), and the HTTP requests per upload by method and upload
type (counted by a response hook on the client's session).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
import requests.adapters
import requests.utils
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.fileio import BlobWriter
from google.cloud.storage.retry import DEFAULT_RETRY

KiB, MiB = 1024, 1024 * 1024
TIMEOUT = 10.0  # HOOKLINE_GCS_TIMEOUT's default
WARM_UP = 32


class Counted:
    """HTTP requests made through one client's session, by (method, upload type)."""

    def __init__(self, session: requests.Session) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        session.hooks["response"].append(self._hook)

    def _hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        request = response.request
        kind = "other"
        for part in (request.url or "").split("?", 1)[-1].split("&"):
            if part.startswith("uploadType="):
                kind = part.removeprefix("uploadType=")
        if request.url and "upload_id=" in request.url:
            kind = "resumable"
        with self._lock:
            self.counts[f"{request.method} {kind}"] += 1


def make_client(url: str, threads: int, trust_env: bool) -> storage.Client:
    """The client as ``GcsBodyStore._make_client`` makes it (keep the two in step)."""
    client = storage.Client(
        project="bench",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": url},
    )
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=threads, max_retries=0)
    session = client._http
    session.mount("http://", adapter)
    if not trust_env:  # hookline.gcs._read_environment_once
        session.proxies.update(requests.utils.get_environ_proxies(url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle and session.verify is True:
            session.verify = bundle
        session.trust_env = False
    return client


def uploader(args: argparse.Namespace, client: storage.Client, body: bytes) -> Any:
    bucket = client.bucket(args.bucket)
    retry = DEFAULT_RETRY.with_timeout(TIMEOUT)
    session = client._http
    media_url = f"{args.url}/upload/storage/v1/b/{args.bucket}/o"

    def multipart(name: str) -> None:
        bucket.blob(name).upload_from_string(
            body,
            content_type="application/octet-stream",
            if_generation_match=0,
            timeout=TIMEOUT,
            retry=retry,
        )

    def resumable(name: str) -> None:
        writer = BlobWriter(
            bucket.blob(name),
            chunk_size=args.chunk_size,
            retry=retry,
            content_type="application/octet-stream",
            if_generation_match=0,
            timeout=TIMEOUT,
        )
        writer.write(body)
        writer.close()

    def media(name: str) -> None:
        params = {"uploadType": "media", "name": name, "ifGenerationMatch": "0"}
        headers = {"Content-Type": "application/octet-stream"}
        resp = session.post(media_url, params=params, data=body, headers=headers, timeout=TIMEOUT)
        resp.raise_for_status()

    return {"multipart": multipart, "resumable": resumable, "media": media}[args.mode]


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time of this process, or of process ``pid``, so far."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the emulator, http://127.0.0.1:PORT")
    p.add_argument("--bucket", required=True)
    p.add_argument("--mode", choices=["multipart", "resumable", "media"], default="multipart")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--size", type=int, default=256 * KiB)
    p.add_argument("--chunk-size", type=int, default=4 * MiB, help="resumable mode's chunk")
    p.add_argument("--prefix", default="raw", help="object names: PREFIX/N")
    p.add_argument(
        "--trust-env",
        action="store_true",
        help="let requests read the environment on every request, as it does by default",
    )
    p.add_argument("--emulator-pid", type=int, help="also report this process's CPU per upload")
    args = p.parse_args()

    client = make_client(args.url, args.threads, args.trust_env)
    counted = Counted(client._http)
    one = uploader(args, client, os.urandom(args.size))
    tag = f"{args.prefix}/{os.getpid()}"
    with ThreadPoolExecutor(args.threads) as pool:
        # Client, connections and code paths warm, as in a receiver that has been running.
        list(pool.map(one, (f"{tag}/w{i}" for i in range(WARM_UP))))
        counted.counts.clear()
        peer = cpu_seconds(args.emulator_pid) if args.emulator_pid else 0.0
        cpu, start = cpu_seconds(), time.monotonic()
        list(pool.map(one, (f"{tag}/{i}" for i in range(args.count))))
        elapsed, cpu = time.monotonic() - start, cpu_seconds() - cpu
        if args.emulator_pid:
            peer = cpu_seconds(args.emulator_pid) - peer
    client.close()
    result = {
        "mode": args.mode,
        **({"trust_env": True} if args.trust_env else {}),
        "size": args.size,
        "threads": args.threads,
        "count": args.count,
        "per_s": round(args.count / elapsed, 1),
        "cpu_ms_per_upload": round(1000 * cpu / args.count, 3),
        "cpu": round(cpu / elapsed, 2),
        **({"emulator_cpu_ms_per_upload": round(1000 * peer / args.count, 3)} if peer else {}),
        "requests_per_upload": {
            k: round(v / args.count, 3) for k, v in sorted(counted.counts.items())
        },
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
