#!/usr/bin/env python3
"""A TCP link with a round-trip time, for bench/dataplane.sh (BENCH_RTT_MS): it takes TCP
connections at --listen, opens one to --to for each, and passes the bytes both ways, each way
after --delay-ms. Loopback answers in microseconds, where two clouds are tens of milliseconds
apart, and the kernel here has no netem. bench/delay.rs does the same for UDP (QUIC), which
needs more datagrams a second than Python forwards. Standard library only; it runs until it
is stopped.

Bytes are held for the delay and then written; a reader that falls behind holds the sender
back through TCP's own window, so nothing is dropped and memory stays bounded by what is in
flight.
"""

import argparse
import asyncio


async def pipe(reader, writer, delay):
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await reader.read(256 << 10)
            if not data:
                break
            loop.call_later(delay, writer.write, data)
            # Holds the reader while more than the high-water mark waits for the socket.
            await writer.drain()
        await asyncio.sleep(delay)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def tcp(listen, to, delay):
    async def accepted(reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(*to)
        except OSError:
            writer.close()
            return
        for side in (writer, up_writer):
            side.transport.set_write_buffer_limits(high=32 << 20)
        await asyncio.gather(pipe(reader, up_writer, delay), pipe(up_reader, writer, delay))
        writer.close()
        up_writer.close()

    server = await asyncio.start_server(accepted, *listen)
    async with server:
        await server.serve_forever()


def address(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=address, required=True)
    parser.add_argument("--to", type=address, required=True)
    parser.add_argument("--delay-ms", type=float, required=True, help="one way")
    args = parser.parse_args()
    asyncio.run(tcp(args.listen, args.to, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
