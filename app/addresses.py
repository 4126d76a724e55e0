"""What a host, a web address, a broker address and a topic name may be: one set of rules for
the config, the command line and the addresses workers advertise to each other."""

from __future__ import annotations

import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
HOST_EXPECTED = (
    "an IP address (such as 127.0.0.1, 0.0.0.0 or ::) or a host name (letters, digits, '-' and '_', "
    "in dot-separated labels of at most 63)"
)
BROKER_SCHEMES = ("kafka", "aiokafka")
BROKER_EXPECTED = (
    "comma-separated kafka://HOST:PORT addresses (PORT from 1 to 65,535; HOST a host name, an IPv4 "
    "address or an IPv6 address in brackets)"
)
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
# What an advertised web address may be: host:port or [IPv6]:port, nothing a browser would
# follow elsewhere. Host names may hold '_' (compose v1 container names, some zones).
WEB_ADDRESS = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]{2,45})\]|(?P<host>[A-Za-z0-9._-]{1,253})):(?P<port>[0-9]{1,5})")


def is_host(text: str) -> bool:
    """An IP address (IPv6 without brackets, perhaps with a zone) or a host name: dot-separated
    labels of letters, digits, '-' (not at either end) and '_' (which names in /etc/hosts and
    container networks use), 253 characters at most."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(HOST_LABEL.fullmatch(label) for label in name.split("."))


def is_broker_address(part: str) -> bool:
    """``[kafka://]HOST[:PORT]``: HOST a host name, an IPv4 address or ``[IPv6]``; PORT 1 to 65,535."""
    scheme, sep, address = part.strip().rpartition("://")
    if sep and scheme not in BROKER_SCHEMES:
        return False
    if address.startswith("["):  # an IPv6 address, then perhaps a port
        host, bracket, rest = address[1:].partition("]")
        if not bracket or ":" not in host or (rest and not rest.startswith(":")):
            return False
        port = rest[1:] if rest else None
    else:
        host, colon, after = address.partition(":")
        port = after if colon else None
    if port is not None and not (re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65_535):
        return False
    return is_host(host)


def is_topic(name: str) -> bool:
    return TOPIC_NAME.fullmatch(name) is not None and name not in (".", "..")


def host_port(host: str | IPAddress, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (as URLs write it)."""
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def ip_address(text: str) -> IPAddress | None:
    """An IP address without its zone, IPv4-mapped IPv6 as IPv4; None when ``text`` is not one."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_web_address(text: str) -> tuple[str, int] | None:
    """(host, port) of an advertised ``host:port`` or ``[IPv6]:port``; None for anything else."""
    match = WEB_ADDRESS.fullmatch(text)
    if match is None:
        return None
    port = int(match["port"])
    if not 0 < port < 65536:
        return None
    if match["ipv6"] is not None:
        address = ip_address(match["ipv6"])
        return (str(address), port) if isinstance(address, ipaddress.IPv6Address) else None
    return (match["host"], port) if is_host(match["host"]) else None
