"""Issuing the service's own JWTs and verifying bearer tokens.

Verification is split from key lookup: `TokenVerifier` pins the algorithms and checks the claims,
and a `KeyResolver` supplies the key, either the service's own public key or the keys published
at an external identity provider's JWKS URL. Key locations named inside a token (`jku`, `x5u`,
embedded `jwk`) are never followed: PyJWT ignores those headers and the resolvers never read them.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any, Protocol

import anyio.to_thread
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec

from docbatch.auth.keys import SIGNING_ALGORITHM
from docbatch.auth.principal import Principal
from docbatch.core.errors import AuthenticationError
from docbatch.core.timefmt import utcnow

logger = structlog.get_logger(__name__)

_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
# Verified tokens kept in memory, and for how long at most: a key removed from an identity
# provider's JWKS stops being trusted within this time.
_CACHE_SIZE = 10_000
_CACHE_SECONDS = 300.0


class KeyResolver(Protocol):
    algorithms: list[str]

    async def key_for(self, token: str) -> Any:
        """Return the key that must have signed `token`."""
        ...


class LocalKeyResolver:
    """The public half of the service's own signing key."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self._public_key = private_key.public_key()
        self.algorithms = [SIGNING_ALGORITHM]

    async def key_for(self, token: str) -> Any:
        return self._public_key


class JwksKeyResolver:
    """Keys from an identity provider's JWKS endpoint, picked by the token's `kid`, cached."""

    def __init__(self, jwks_url: str, algorithms: list[str]) -> None:
        self._client = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=10)
        self.algorithms = algorithms

    async def key_for(self, token: str) -> Any:
        try:
            signing_key = await anyio.to_thread.run_sync(
                self._client.get_signing_key_from_jwt, token
            )
        except jwt.PyJWKClientConnectionError as error:
            logger.warning("auth.jwks_unreachable", error=str(error))
            raise AuthenticationError(
                "The identity provider's signing keys could not be fetched; retry later."
            ) from error
        except jwt.PyJWTError as error:
            raise AuthenticationError(f"The bearer token is invalid: {error}.") from error
        return signing_key.key


class TokenVerifier:
    def __init__(
        self,
        resolver: KeyResolver,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: int,
        roles_claim: str,
        tenants_claim: str,
    ) -> None:
        self._resolver = resolver
        self._issuer = issuer
        self._audience = audience
        self._leeway = timedelta(seconds=leeway_seconds)
        self._roles_claim = roles_claim
        self._tenants_claim = tenants_claim
        self._verified: dict[str, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal:
        """Verify signature and claims; raise `AuthenticationError` (401) for any defect.

        A verified token is remembered until its expiry (at most `_CACHE_SECONDS`), so a client
        that reuses its token skips the signature check on later requests.
        """
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None:
            principal, valid_until = cached
            if now < valid_until:
                return principal
            del self._verified[token]
        principal, expires_at = await self._verify_uncached(token)
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = (principal, min(expires_at, now + _CACHE_SECONDS))
        return principal

    async def _verify_uncached(self, token: str) -> tuple[Principal, float]:
        key = await self._resolver.key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self._resolver.algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError as error:
            raise AuthenticationError(
                "The bearer token has expired; request a new one from /core/connect/token."
            ) from error
        except jwt.PyJWTError as error:
            raise AuthenticationError(f"The bearer token is invalid: {error}.") from error
        principal = Principal(
            subject=str(claims["sub"]),
            roles=frozenset(_string_list(claims.get(self._roles_claim), self._roles_claim)),
            tenants=frozenset(_tenant_list(claims.get(self._tenants_claim), self._tenants_claim)),
        )
        return principal, float(claims["exp"])


def _string_list(value: Any, claim: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise AuthenticationError(f"The bearer token's '{claim}' claim must be a list of strings.")


def _tenant_list(value: Any, claim: str) -> list[uuid.UUID]:
    try:
        return [uuid.UUID(item) for item in _string_list(value, claim)]
    except ValueError as error:
        raise AuthenticationError(
            f"The bearer token's '{claim}' claim must list tenant GUIDs."
        ) from error


class TokenIssuer:
    """Signs the service's own access tokens."""

    def __init__(
        self,
        private_key: ec.EllipticCurvePrivateKey,
        *,
        issuer: str,
        audience: str,
        ttl_seconds: int,
        roles_claim: str = "roles",
        tenants_claim: str = "tenants",
    ) -> None:
        self._private_key = private_key
        self._issuer = issuer
        self._audience = audience
        self.ttl_seconds = ttl_seconds
        self._roles_claim = roles_claim
        self._tenants_claim = tenants_claim

    def issue(self, subject: str, roles: list[str], tenants: list[str]) -> str:
        now = utcnow()
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + timedelta(seconds=self.ttl_seconds),
            "jti": uuid.uuid4().hex,
            self._roles_claim: roles,
            self._tenants_claim: tenants,
        }
        return jwt.encode(claims, self._private_key, algorithm=SIGNING_ALGORITHM)
