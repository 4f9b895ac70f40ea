#!/usr/bin/env python3
"""One relayed flow of zeros straight into a gateway's relay, for bench/dataplane.sh (bulk
variant "strait-gateway-pair"): the QUIC leg alone, with no sidecar on either side.

Connects to --relay, sends the FlowOpen header a sidecar would (a 2-byte big-endian length,
then the protobuf message: cluster, namespace, service, port), reads the gateway's FlowReply
and stops with exit status 1 when it is a refusal. Then it sends --bytes zeros, half-closes,
and waits (at most --timeout seconds) for the gateway to close the flow. Standard library only.
"""

import argparse
import socket
import sys


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, value):
    """One protobuf field: a string (length-delimited) or an unsigned integer (varint)."""
    if isinstance(value, str):
        data = value.encode()
        return varint(number << 3 | 2) + varint(len(data)) + data
    return varint(number << 3) + varint(value)


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"the relay closed after {len(data)} of {n} bytes of its answer")
        data += chunk
    return data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relay", required=True, help="HOST:PORT of the gateway's relay")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bytes", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()

    host, port = args.relay.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=args.timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = (field(1, args.cluster) + field(2, args.namespace) + field(3, args.service)
            + field(4, args.port))
    sock.sendall(len(body).to_bytes(2, "big") + body)
    reply = read_exact(sock, int.from_bytes(read_exact(sock, 2), "big"))
    # FlowReply: field 1 (ok, a varint 1), or a refusal's text.
    if reply[:2] != b"\x08\x01":
        print(f"refused: {reply!r}", file=sys.stderr)
        return 1
    chunk = memoryview(bytes(256 << 10))
    left = args.bytes
    while left > 0:
        n = min(left, len(chunk))
        sock.sendall(chunk[:n])
        left -= n
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
