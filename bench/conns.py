#!/usr/bin/env python3
"""Many idle keep-alive connections through a proxy, for bench/dataplane.sh (case "conns").

Opens --connections TCP connections to 127.0.0.1:--port, at most --concurrency connects at a
time (so that the proxy's listen backlog is not overrun), sends one `GET / HTTP/1.1` with the
given Host on each and reads the whole response (by its Content-Length), then keeps every
connection open and idle. It prints

    held N ok=K failed=F

waits until the file --close-when exists (polled every 100 ms, at most --hold-timeout seconds),
closes every connection and prints

    closed dropped=D

where D counts the connections the proxy had closed while they were held (idle). A connection
fails when its connect, request or response takes longer than --timeout, when the answer is not
a 200, or when the opening phase as a whole passes --open-timeout; failures are counted, never
raised, and the exit status is 0 whatever the counts (the benchmark reads them). Standard
library only.
"""

import argparse
import asyncio
import os
import resource
import sys


def raise_nofile(want):
    """Soft RLIMIT_NOFILE up to the hard limit: one descriptor per connection, and some spare."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, want)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    except (ValueError, OSError):
        return soft


async def read_response(reader, timeout):
    """Reads one HTTP/1.1 response with a Content-Length body; returns the status code."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length:
        await asyncio.wait_for(reader.readexactly(length), timeout)
    return status


async def open_one(args, request, gate):
    """One connection with one request answered, or None (the failure is counted by the caller)."""
    async with gate:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", args.port), args.timeout)
            writer.write(request)
            await asyncio.wait_for(writer.drain(), args.timeout)
            if await read_response(reader, args.timeout) != 200:
                raise ValueError("not a 200")
            return reader, writer
        except Exception:  # pylint: disable=broad-except # any failure is a count, not a crash
            if writer is not None:
                writer.close()
            return None


async def wait_for_file(path, timeout):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not os.path.exists(path) and loop.time() < end:
        await asyncio.sleep(0.1)


async def close_all(held, timeout):
    for _, writer in held:
        writer.close()

    async def closed(writer):
        try:
            await asyncio.wait_for(writer.wait_closed(), timeout)
        except Exception:  # pylint: disable=broad-except # a reset or a timeout: it is closed anyway
            pass

    await asyncio.gather(*(closed(w) for _, w in held))


async def main(args):
    request = ("GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: strait-bench-conns\r\n\r\n"
               % args.host).encode("ascii")
    gate = asyncio.Semaphore(args.concurrency)
    tasks = [asyncio.ensure_future(open_one(args, request, gate)) for _ in range(args.connections)]
    done, pending = await asyncio.wait(tasks, timeout=args.open_timeout)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    held = [t.result() for t in done if t.result() is not None]
    failed = args.connections - len(held)
    print("held %d ok=%d failed=%d" % (args.connections, len(held), failed), flush=True)

    await wait_for_file(args.close_when, args.hold_timeout)
    # A connection whose reader saw EOF was closed by the proxy while it sat idle.
    dropped = sum(1 for reader, _ in held if reader.at_eof())
    await close_all(held, args.timeout)
    print("closed dropped=%d" % dropped, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True, help="the proxy's port on 127.0.0.1")
    p.add_argument("--host", required=True, help="Host header of the request")
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=256, help="connects in flight at once")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds for each connect, write, read and close")
    p.add_argument("--open-timeout", type=float, default=180.0,
                   help="seconds for the whole opening phase")
    p.add_argument("--close-when", required=True, help="close everything once this file exists")
    p.add_argument("--hold-timeout", type=float, default=300.0,
                   help="close anyway after this many seconds of waiting for the file")
    return p.parse_args()


if __name__ == "__main__":
    ARGS = parse_args()
    LIMIT = raise_nofile(ARGS.connections + 64)
    if LIMIT != resource.RLIM_INFINITY and LIMIT < ARGS.connections + 16:
        print("conns.py: open-file limit %d is below %d connections; some will fail"
              % (LIMIT, ARGS.connections), file=sys.stderr, flush=True)
    asyncio.run(main(ARGS))
    sys.exit(0)
