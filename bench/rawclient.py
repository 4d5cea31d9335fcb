"""The delivery baseline: a raw aiohttp client posting ``--count`` bodies to the sink.

Same body size, same concurrency and the same connector settings as the
dispatcher's session (``hookline.runtime.client_session``), under uvloop; no
queue, no signing, no bookkeeping. The rate is taken by the sink, as for the
dispatcher. Prints one JSON line: posts made, failures, wall and CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
import uvloop


async def post_all(url: str, count: int, concurrency: int, body: bytes) -> dict[str, float]:
    left = count
    failed = 0
    connector = aiohttp.TCPConnector(
        limit=concurrency, limit_per_host=0, ttl_dns_cache=10, enable_cleanup_closed=True
    )
    headers = {"Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left, failed
        while left > 0:
            left -= 1
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    failed += not 200 <= resp.status < 300
            except aiohttp.ClientError:
                failed += 1

    wall, cpu = time.monotonic(), time.process_time()
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
    ) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    return {"posted": count, "failed": failed, "seconds": wall, "cpu_seconds": cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--body-bytes", type=int, default=1024)
    args = p.parse_args()
    body = b'{"type":"bench","pad":"' + b"x" * (args.body_bytes - 25) + b'"}'
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(post_all(args.url, args.count, args.concurrency, body))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
