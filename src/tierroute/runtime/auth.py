"""Bearer tokens: who a caller is, for the router's gRPC API and its HTTP front.

Each client has a name and a token. Only the token's SHA-256 is kept (in the tokens file, and
in memory for tokens given in the environment); a presented token is hashed and compared with
every known hash in constant time (hmac.compare_digest, no early exit), so neither the file
nor the timing tells a token. The client's name goes to spans (`tierroute.client`) and logs;
the token never does.

The tokens file (`router.auth_tokens_file`), written by `tierroute token new NAME --file F`:

    clients:
      - name: billing-app
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

and/or the environment variable `router.auth_tokens_env` (default TIERROUTE_TOKENS):
`name=token,name2=token2`. With neither, the API is open (the embedded local default).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from opentelemetry import trace

TOKEN_PREFIX = "trk_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
# The client a request came from, for logs; "" when the API is open.
CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("tierroute_client", default="")


logger = logging.getLogger(__name__)


class AuthConfigError(ValueError):
    """A tokens file or variable that cannot be used; the message says what to fix."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def caller(clients: Clients | None, header: str | None, peer: str, front: str) -> str | None:
    """Who is calling, the same way on every front: the client its `authorization: Bearer`
    header names, or, on a service without tokens, `peer:<peer>`. None when tokens are needed
    and the header names no known one (logged as a refusal on `front`, never the token). The
    name goes in CLIENT (for logs, limits and the ledger) and on the current span."""
    if clients is None:
        name = f"peer:{peer}"
    else:
        known = clients.from_header(header)
        if known is None:
            why = "unknown" if header else "no"
            logger.info("refused a call: %s bearer token (%s)", why, front)
            return None
        name = known
    CLIENT.set(name)
    trace.get_current_span().set_attribute("tierroute.client", name)
    return name


@dataclass(frozen=True)
class Clients:
    """Known clients: name by token hash."""

    hashes: tuple[tuple[str, bytes], ...]  # (name, sha256 digest)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.hashes]

    def identify(self, token: str) -> str | None:
        """The client whose token this is, or None. Every hash is compared, match or not."""
        presented = hashlib.sha256(token.encode()).digest()
        found = None
        for name, known in self.hashes:
            if hmac.compare_digest(presented, known) and found is None:
                found = name
        return found

    def from_header(self, value: str | None) -> str | None:
        """The client of an `authorization: Bearer <token>` value, or None."""
        if not value:
            return None
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.identify(token.strip())


def load_clients(
    tokens_file: Path | None, env_var: str, environ: Mapping[str, str] | None = None
) -> Clients | None:
    """The clients of the tokens file and the variable; None when neither names any."""
    environ = os.environ if environ is None else environ
    hashes: list[tuple[str, bytes]] = []
    if tokens_file is not None:
        hashes += _read_file(tokens_file)
    raw = environ.get(env_var, "").strip()
    if raw:
        for i, item in enumerate(raw.split(",")):
            name, sep, token = item.strip().partition("=")
            if not sep or not _NAME.match(name) or len(token) < 16:
                raise AuthConfigError(
                    f"{env_var}: entry {i + 1} must be name=token (a name of letters, digits, "
                    ". _ -; a token of 16 characters or more)"
                )
            hashes.append((name, hashlib.sha256(token.encode()).digest()))
    names = [n for n, _ in hashes]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise AuthConfigError(f"client names must be unique; repeated: {', '.join(repeated)}")
    return Clients(tuple(hashes)) if hashes else None


def _read_file(path: Path) -> list[tuple[str, bytes]]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise AuthConfigError(
            f"tokens file {path} does not exist: create it with `tierroute token new NAME "
            f"--file {path}`"
        ) from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"tokens file {path}: cannot read it: {exc}") from None
    clients = doc.get("clients") if isinstance(doc, dict) else None
    if not isinstance(clients, list):
        raise AuthConfigError(f"tokens file {path}: needs `clients:`, a list of name and sha256")
    out = []
    for i, c in enumerate(clients):
        where = f"tokens file {path}, clients[{i}]"
        if not isinstance(c, dict) or set(c) != {"name", "sha256"}:
            raise AuthConfigError(f"{where}: needs exactly `name` and `sha256`")
        if not isinstance(c["name"], str) or not _NAME.match(c["name"]):
            raise AuthConfigError(f"{where}: name must be letters, digits, . _ - (up to 64)")
        if not isinstance(c["sha256"], str) or not _HEX.match(c["sha256"]):
            raise AuthConfigError(
                f"{where}: sha256 must be 64 lowercase hex digits (the token's SHA-256, never "
                "the token itself)"
            )
        out.append((c["name"], bytes.fromhex(c["sha256"])))
    return out


def add_client(path: Path, name: str) -> str:
    """A new token for `name`, its hash appended to the tokens file (created 0600). Returns
    the token: shown once, kept nowhere."""
    if not _NAME.match(name):
        raise AuthConfigError(f"client name {name!r}: use letters, digits, . _ - (up to 64)")
    existing = _read_file(path) if path.exists() else []
    if name in [n for n, _ in existing]:
        raise AuthConfigError(f"{path} already has a client {name!r}: pick another name")
    token = new_token()
    clients = [{"name": n, "sha256": h.hex()} for n, h in existing]
    clients.append({"name": name, "sha256": digest(token)})
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_name(f".{path.name}.writing")
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(
            "# tierroute clients: each token's SHA-256, never the token (tierroute token new)\n"
        )
        yaml.safe_dump({"clients": clients}, f, sort_keys=False)
    fresh.replace(path)
    return token
