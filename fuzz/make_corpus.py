#!/usr/bin/env python3
"""Writes the seed corpus of the dns_query fuzz target: a handful of valid queries, one file
each, into corpus/dns_query/ beside this script. Run it again after changing the list."""

import os
import struct

A, NS, SOA, AAAA, SRV, ANY = 1, 2, 6, 28, 33, 255
ZONE = "clusterset.local"


def query(ident, name, qtype, edns=None, rd=True, qclass=1):
    """A standard query with one question, and an OPT record of `edns` bytes when given."""
    flags = 0x0100 if rd else 0
    header = struct.pack(">HHHHHH", ident, flags, 1, 0, 0, 1 if edns is not None else 0)
    wire = b""
    for label in name.rstrip(".").split("."):
        wire += bytes([len(label)]) + label.encode()
    wire += b"\x00" + struct.pack(">HH", qtype, qclass)
    if edns is not None:
        # Root owner, type OPT, payload size as class, TTL 0 (version 0, no flags), no options.
        wire += b"\x00" + struct.pack(">HHIH", 41, edns, 0, 0)
    return header + wire


SEEDS = {
    "a": query(0x0001, f"api.shop.svc.{ZONE}", A),
    "a_edns": query(0x0002, f"api.shop.svc.{ZONE}", A, edns=1232),
    "a_uppercase": query(0x0003, f"API.Shop.SVC.{ZONE.upper()}", A),
    "a_cluster": query(0x0004, f"west.api.shop.svc.{ZONE}", A, edns=4096),
    "a_pod": query(0x0005, f"api-0.east.api.shop.svc.{ZONE}", A, rd=False),
    "aaaa": query(0x0006, f"orders.shop.svc.{ZONE}", AAAA),
    "aaaa_edns_small": query(0x0007, f"orders.shop.svc.{ZONE}", AAAA, edns=512),
    "srv": query(0x0008, f"_http._tcp.west.api.shop.svc.{ZONE}", SRV),
    "srv_edns": query(0x0009, f"_grpc._tcp.api.shop.svc.{ZONE}", SRV, edns=1232),
    "srv_big": query(0x000A, f"_tcp._tcp.bulk.shop.svc.{ZONE}", SRV),
    "srv_big_edns": query(0x000B, f"_tcp._tcp.bulk.shop.svc.{ZONE}", SRV, edns=1232),
    "soa": query(0x000C, ZONE, SOA),
    "ns_edns": query(0x000D, ZONE, NS, edns=1232),
    "any": query(0x000E, ZONE, ANY),
    "empty_non_terminal": query(0x000F, f"shop.svc.{ZONE}", A),
    "nxdomain": query(0x0010, f"nothere.shop.svc.{ZONE}", A),
    "nxdomain_edns": query(0x0011, f"ledger.shop.svc.{ZONE}", A, edns=1232),
    "out_of_zone": query(0x0012, "example.com", A),
    "out_of_zone_edns": query(0x0013, "api.shop.svc.cluster.local", AAAA, edns=1232),
    "chaos_class": query(0x0014, f"api.shop.svc.{ZONE}", A, qclass=3),
}


def main():
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "dns_query")
    os.makedirs(folder, exist_ok=True)
    for name, packet in SEEDS.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(packet)
    print(f"{len(SEEDS)} queries written to {folder}")


if __name__ == "__main__":
    main()
