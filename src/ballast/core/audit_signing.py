"""Who signs audit checkpoints, and how anyone checks a signature with the public key alone.

The key that signs must not live in the store it vouches for: whoever can rewrite the database could then
re-sign a rewritten chain. The server is given a key file at start (a KMS could implement `Signer` later);
verifying needs only the public key, so an auditor holds nothing secret. Keys are Ed25519. Parsing keys
from bytes is pure; the entry points read the files.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ballast.errors import BallastError


class BadKey(BallastError):
    """A key file that is not what it must be (named in the message)."""
    status = 2


def _kind(key: object) -> str:
    """What a key of the wrong type is, for the error ('an RSA', 'an EC', …)."""
    for kinds, name in (((rsa.RSAPrivateKey, rsa.RSAPublicKey), "an RSA"), ((ec.EllipticCurvePrivateKey,
                        ec.EllipticCurvePublicKey), "an EC"), ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "an Ed448")):
        if isinstance(key, kinds):
            return name
    return f"a {type(key).__name__}"


def key_id_of(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of SHA-256 over its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


class Signer(Protocol):
    """What signs checkpoints: a key file today, a KMS tomorrow."""

    @property
    def key_id(self) -> str: ...

    def public_key(self) -> "PublicKey": ...

    def sign(self, payload: bytes) -> bytes: ...


class PublicKey:
    """An Ed25519 public key that checks signatures."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self.key_id = key_id_of(key)

    @classmethod
    def from_pem(cls, data: bytes, source: str) -> "PublicKey":
        """A PEM public key, or a PEM private key (its public half); `source` names the file in errors."""
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            try:
                private = serialization.load_pem_private_key(data, password=None)
            except (ValueError, TypeError) as exc:
                raise BadKey(f"{source}: not a PEM public key ({exc})") from None
            key = private.public_key()
        if not isinstance(key, Ed25519PublicKey):
            raise BadKey(f"{source}: {_kind(key)} key, expected an Ed25519 key")
        return cls(key)

    def pem(self) -> bytes:
        return self._key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def verifies(self, payload: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, payload)
            return True
        except InvalidSignature:
            return False


class Ed25519Signer:
    """A `Signer` over an Ed25519 private key loaded from a PEM key file."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._public = PublicKey(key.public_key())

    @classmethod
    def from_pem(cls, data: bytes, source: str) -> "Ed25519Signer":
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise BadKey(f"{source}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise BadKey(f"{source}: {_kind(key)} key, expected an Ed25519 private key")
        return cls(key)

    @classmethod
    def generate(cls) -> "Ed25519Signer":
        return cls(Ed25519PrivateKey.generate())

    @property
    def key_id(self) -> str:
        return self._public.key_id

    def public_key(self) -> PublicKey:
        return self._public

    def private_pem(self) -> bytes:
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def sign(self, payload: bytes) -> bytes:
        return self._key.sign(payload)
