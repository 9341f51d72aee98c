"""The service's own signing key: an EC P-256 key in a PEM file, used with ES256."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIGNING_ALGORITHM = "ES256"


def load_or_create_signing_key(path: Path, *, create: bool) -> ec.EllipticCurvePrivateKey:
    """Load the PEM private key at `path`; create it (mode 0600) when `create` is set."""
    if not path.exists():
        if not create:
            raise FileNotFoundError(
                f"the signing key file {path} does not exist; create one with "
                "`openssl ecparam -name prime256v1 -genkey -noout -out KEYFILE` or let "
                "`docbatch serve` create it on the embedded default"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            # Another process created the key first; use that one.
            return load_or_create_signing_key(path, create=False)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
        return key
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(
        loaded.curve, ec.SECP256R1
    ):
        raise TypeError(f"the signing key file {path} must hold an EC P-256 (prime256v1) key")
    return loaded
