"""Sends crafted VRRPv3 adverts on eth0 (run inside a lab namespace), one per bad case, then a
valid higher-priority control advert. Usage: vrrp_bad_packets.py SRC CASE..."""
import struct
import sys

from scapy.all import IP, Ether, Raw, conf, sendp

conf.verb = 0
SRC = sys.argv[1]
DST = "224.0.0.18"
VIP = bytes([192, 0, 2, 100])
# A bridge drops frames from an invalid (zero) source MAC, which scapy may pick in a namespace.
MAC = open("/sys/class/net/eth0/address").read().strip()


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def advert(ver=3, typ=1, vrid=51, prio=200, count=1, adv=10, addrs=VIP, pseudo=True, corrupt=False):
    body = struct.pack("!BBBBH", (ver << 4) | typ, vrid, prio, count, adv & 0x0FFF) + b"\0\0" + addrs
    ph = bytes(map(int, SRC.split("."))) + bytes(map(int, DST.split("."))) + struct.pack("!BBH", 0, 112, len(body))
    c = csum((ph if pseudo else b"") + body)
    if corrupt:
        c ^= 0x5555
    return body[:6] + struct.pack("!H", c) + body[8:]


CASES = {
    "ttl": (advert(), 64),
    "checksum": (advert(corrupt=True), 255),
    "version": (advert(ver=2), 255),
    "type": (advert(typ=2), 255),
    "vrid": (advert(vrid=52), 255),
    "truncated": (advert()[:6], 255),
    "count": (advert(count=2), 255),
    "interval": (advert(adv=0), 255),
    "mode": (advert(pseudo=False), 255),
    "addresses": (advert(addrs=bytes([192, 0, 2, 101])), 255),
    "valid": (advert(), 255),
}

for case in sys.argv[2:]:
    payload, ttl = CASES[case]
    # Layer 2, so no route to the multicast group is needed in the namespace.
    frame = Ether(src=MAC, dst="01:00:5e:00:00:12") / IP(src=SRC, dst=DST, ttl=ttl, proto=112) / Raw(payload)
    sendp(frame, iface="eth0", count=3, inter=0.02)
