"""Certificates for the TLS benchmark and tests, made with the ``openssl`` command line: a CA,
a server certificate for 127.0.0.1/localhost and a client certificate signed by it, and a
client certificate signed by another CA. RSA keys: dcmtk's BCP 195 profiles offer only RSA
suites for TLS 1.2."""

import subprocess
from dataclasses import dataclass
from pathlib import Path

from oxidip.bench.tools import need

__all__ = ["CLIENT_SUBJECT", "Identity", "Pki", "make_pki"]

#: The subject the client certificate carries, as the receiver reports it.
CLIENT_SUBJECT = "O=oxidip tests, CN=client"


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Identity
    client: Identity
    #: Signed by another CA than ``ca``.
    stranger: Identity


def _openssl(*args: str) -> None:
    subprocess.run([need("openssl"), *args], check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _leaf(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> Identity:
    cert, key, csr = (directory / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
    config = directory / f"{name}.ext"
    config.write_text(f"basicConstraints=CA:FALSE\n{extensions}\n")
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes",
        "-subj", f"/O=oxidip tests/CN={name}", "-keyout", str(key), "-out", str(csr),
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "2", "-extfile", str(config), "-out", str(cert),
    )  # fmt: skip
    return Identity(cert, key)


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "oxidip-test-ca")
    other_ca = _ca(directory, "another-ca")
    server = _leaf(
        directory,
        "server",
        ca,
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost",
    )
    client = _leaf(directory, "client", ca, "extendedKeyUsage=clientAuth")
    stranger = _leaf(directory, "stranger", other_ca, "extendedKeyUsage=clientAuth")
    return Pki(ca=ca[0], server=server, client=client, stranger=stranger)
