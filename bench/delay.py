#!/usr/bin/env python3
"""A link with a round-trip time, for bench/dataplane.sh (BENCH_RTT_MS): it takes UDP datagrams
or a TCP stream at --listen and passes them on to --to, and the answers back, each way after
--delay-ms. Loopback answers in microseconds, where gateways of two clouds wait tens of
milliseconds: this lets the bench see what the flow-control windows allow at such a distance
(and the kernel here has no netem). Standard library only; it runs until it is stopped.

UDP: one peer at a time (the first address that sends), as one QUIC connection between two
gateways is. TCP: any number of connections, each with its own upstream connection. Bytes are
held for the delay and then written; a reader that falls behind holds the sender back through
TCP's own window, so nothing is dropped and memory stays bounded by what is in flight.
"""

import argparse
import asyncio
import socket


class Side(asyncio.DatagramProtocol):
    """One socket of the UDP link; what it receives goes to `on_datagram`."""

    def __init__(self, on_datagram):
        self.on_datagram = on_datagram
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, 16 << 20)

    def datagram_received(self, data, addr):
        self.on_datagram(data, addr)

    def error_received(self, exc):
        pass


async def udp(listen, to, delay):
    loop = asyncio.get_running_loop()
    peer = None

    def from_peer(data, addr):
        nonlocal peer
        peer = addr
        loop.call_later(delay, back.transport.sendto, data, to)

    def from_target(data, _addr):
        if peer is not None:
            loop.call_later(delay, front.transport.sendto, data, peer)

    # `front` takes the peer's datagrams at --listen; `back` sends them on to --to and takes
    # the answers.
    front = Side(from_peer)
    back = Side(from_target)
    await loop.create_datagram_endpoint(lambda: front, local_addr=listen)
    await loop.create_datagram_endpoint(lambda: back, local_addr=("127.0.0.1", 0))
    await asyncio.Event().wait()


async def pipe(reader, writer, delay):
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await reader.read(256 << 10)
            if not data:
                break
            loop.call_later(delay, writer.write, data)
            # Hold the reader while more than 32 MiB wait for the socket.
            while writer.transport.get_write_buffer_size() > (32 << 20):
                await asyncio.sleep(delay / 4)
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
    parser.add_argument("protocol", choices=["udp", "tcp"])
    parser.add_argument("--listen", type=address, required=True)
    parser.add_argument("--to", type=address, required=True)
    parser.add_argument("--delay-ms", type=float, required=True, help="one way")
    args = parser.parse_args()
    run = udp if args.protocol == "udp" else tcp
    asyncio.run(run(args.listen, args.to, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
