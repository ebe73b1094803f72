"""The directory of remote DICOM nodes: the peers oxidip calls, by AE title.

A node is an Application Entity we open associations to (today the PACS asked for a series'
expected count, ``oxidip.completeness``; next the destinations of routing and the sources of
pull): its AE title and where it listens. ``OXIDIP_PACS_ADDRESS`` lists them in oxidicom's
form, ``AET=host:port[,AET=host:port...]``; ``NodeDirectory.parse`` reads it, and the same
AE title rules (``check_ae_title``) apply to every AE title of the configuration.

Imports nothing heavy (no pydicom, no pynetdicom): configuration reads it at every start.
"""

import ipaddress
from collections.abc import Iterator, Mapping

import msgspec

__all__ = [
    "ADDRESS_FORM",
    "AE_TITLE_ACCEPTS",
    "InvalidAeTitle",
    "NodeDirectory",
    "RemoteNode",
    "check_ae_title",
]

#: What an AE title may be, as a phrase (error messages, ``--help``).
AE_TITLE_ACCEPTS = "1 to 16 printable ASCII characters without backslash, not only spaces"

#: The form of a directory's text (``OXIDIP_PACS_ADDRESS``).
ADDRESS_FORM = "AET=host:port[,AET=host:port...] (IPv6 hosts in brackets: AET=[::1]:104)"

#: PS3.5 6.2: an AE value is at most 16 characters.
_AE_TITLE_MAX = 16


class InvalidAeTitle(ValueError):
    """An AE title breaks PS3.5's AE rules; the message says which, without the title."""


def check_ae_title(raw: str) -> str:
    """Validates one AE title (PS3.5 6.2, value representation AE: at most 16 characters of
    the default character repertoire without backslash or control characters, leading and
    trailing spaces not significant) and returns it without those spaces. Raises
    ``InvalidAeTitle`` saying what is wrong."""
    for char in raw:
        if char == "\\":
            raise InvalidAeTitle("contains a backslash")
        if not " " <= char <= "~":
            raise InvalidAeTitle(f"contains {char!r}, which is not a printable ASCII character")
    title = raw.strip(" ")
    if not title:
        raise InvalidAeTitle("empty or only spaces")
    if len(title) > _AE_TITLE_MAX:
        raise InvalidAeTitle(f"{len(title)} characters long, at most {_AE_TITLE_MAX} allowed")
    return title


class RemoteNode(msgspec.Struct, frozen=True):
    """A DICOM peer we call: its AE title (the called AE title of our associations) and the
    host and port it listens on."""

    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        """``AET at host:port`` (an IPv6 host in brackets), for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.aet} at {host}:{self.port}"


class NodeDirectory(Mapping[str, RemoteNode]):
    """Remote nodes by AE title (the title a node is known by, usually its own ``aet``).
    Looking a title up ignores leading and trailing spaces (a calling AE title as received
    may be padded, PS3.5 6.2)."""

    def __init__(self, nodes: Mapping[str, RemoteNode] | None = None) -> None:
        self._nodes = {aet.strip(): node for aet, node in (nodes or {}).items()}

    @classmethod
    def parse(cls, text: str) -> "NodeDirectory":
        """Reads ``AET=host:port,AET2=host2:port2`` (oxidicom's ``OXIDICOM_PACS_ADDRESS``
        form). Spaces around entries, AE titles, hosts and ports are ignored; an empty or
        blank text is an empty directory. Raises ``ValueError`` saying what is wrong and the
        accepted form (empty entries, a missing ``=`` or port, a port outside 1-65535, an
        invalid AE title, an IPv6 address outside brackets, an AE title given twice)."""
        nodes: dict[str, RemoteNode] = {}
        if not text.strip():
            return cls(nodes)
        for raw in text.split(","):
            entry = raw.strip()
            if not entry:
                raise ValueError(f"empty entry in {text!r} (stray comma?); expected {ADDRESS_FORM}")
            node = _parse_entry(entry)
            if node.aet in nodes:
                raise ValueError(f"AE title {node.aet!r} is given twice; expected {ADDRESS_FORM}")
            nodes[node.aet] = node
        return cls(nodes)

    def __getitem__(self, aet: str) -> RemoteNode:
        return self._nodes[aet.strip()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return f"NodeDirectory({self._nodes!r})"


def _parse_entry(entry: str) -> RemoteNode:
    aet, sep, address = entry.partition("=")
    if not sep:
        raise ValueError(f"entry {entry!r} has no '='; expected {ADDRESS_FORM}")
    aet = aet.strip()
    if not aet:
        raise ValueError(f"entry {entry!r} has an empty AE title; expected {ADDRESS_FORM}")
    try:
        aet = check_ae_title(aet)
    except InvalidAeTitle as error:
        raise ValueError(
            f"AE title {aet!r} in {entry!r}: {error}; expected {ADDRESS_FORM}, an AET"
            f" being {AE_TITLE_ACCEPTS}"
        ) from None
    host, port_text = _split_address(address.strip(), entry)
    return RemoteNode(aet=aet, host=host, port=_check_port(port_text, entry))


def _split_address(address: str, entry: str) -> tuple[str, str]:
    """``host:port`` or ``[IPv6]:port`` -> (host, port text)."""
    if address.startswith("["):
        close = address.find("]")
        if close < 0:
            raise ValueError(
                f"entry {entry!r} has an unclosed '[' in its host; expected {ADDRESS_FORM}"
            )
        host = address[1:close]
        rest = address[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"{host!r} in {entry!r} is not an IPv6 address (brackets are only for IPv6); "
                f"expected {ADDRESS_FORM}"
            ) from None
        if not rest.startswith(":"):
            raise ValueError(f"entry {entry!r} has no ':port' after ']'; expected {ADDRESS_FORM}")
        return host, rest[1:]
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"entry {entry!r} has no ':port'; expected {ADDRESS_FORM}")
    if ":" in host:
        raise ValueError(
            f"host {host!r} in {entry!r} looks like an IPv6 address: write it in brackets "
            f"([{host}]:{port_text}); expected {ADDRESS_FORM}"
        )
    return _check_host(host, entry), port_text


def _check_port(text: str, entry: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"port {text!r} in {entry!r} is not a number; expected {ADDRESS_FORM}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} in {entry!r} is not in 1-65535; expected {ADDRESS_FORM}")
    return port


def _check_host(host: str, entry: str) -> str:
    if not host:
        raise ValueError(f"entry {entry!r} has an empty host; expected {ADDRESS_FORM}")
    if any(c.isspace() for c in host) or not host.isascii() or not host.isprintable():
        raise ValueError(
            f"host {host!r} in {entry!r} contains spaces or non-ASCII characters;"
            f" expected {ADDRESS_FORM}"
        )
    return host
