"""Secrets: named sets of environment variables, encrypted at rest with the server key.

Values are sealed with Fernet (AES-128-CBC + HMAC-SHA256) under one key per control plane,
generated on first start and kept in the state directory (mode 0600), and opened only to
build a container's environment. No error message, log line or repr here contains a value:
errors name secrets and keys only.

A function's secrets travel in its spec as references (``FunctionSpecRecord.secrets``):
the name of an account secret, or ``inline:<token>`` for values sent with the deploy
(``Secret.from_dict``), sealed like named ones.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken

from apothic.server.deployments import validate_name
from apothic.server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from apothic.server.models import utcnow
from apothic.server.store_secrets import SecretRow

if TYPE_CHECKING:
    from apothic.server.store import Store

log = logging.getLogger("apothic.server.secrets")

#: Name of the key file in the state directory.
KEY_FILE = "secret.key"
#: Prefix of a spec's secret reference that carries inline (sealed) values.
INLINE_PREFIX = "inline:"
MAX_KEYS = 100
MAX_KEY_CHARS = 256
MAX_VALUE_BYTES = 64 * 1024
MAX_SECRET_BYTES = 256 * 1024
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def load_key(state_dir: Path) -> bytes:
    """The server key in ``state_dir``, generated (mode 0600) when there is none yet.

    Raises:
        RuntimeError: the key file exists but is not a valid key.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("secret key %s was readable by others (mode %o); setting 0600", path, mode)
            path.chmod(0o600)
        key = path.read_bytes().strip()
        try:
            Fernet(key)
        except ValueError:
            raise RuntimeError(f"{path} is not a valid secret key; restore it from a backup") from None
        return key
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    log.info("generated a new secret key in %s", path)
    return key


@dataclass(frozen=True)
class SecretInfo:
    """A secret as listed: everything but its values."""

    name: str
    keys: tuple[str, ...]
    created_at: datetime
    updated_at: datetime


def _info(row: SecretRow) -> SecretInfo:
    return SecretInfo(row.name, row.keys, row.created_at, row.updated_at)


def validate_values(what: str, values: Mapping[str, str]) -> None:
    """Raises InvalidArgument unless ``values`` is a usable set of environment variables.

    Messages name ``what`` and the offending key, never a value.
    """
    if not values:
        raise InvalidArgument(f"{what} has no values: give at least one KEY=VALUE")
    if len(values) > MAX_KEYS:
        raise InvalidArgument(f"{what} has {len(values)} keys; the limit is {MAX_KEYS}")
    total = 0
    for key, value in values.items():
        if not _ENV_KEY_RE.match(key) or len(key) > MAX_KEY_CHARS:
            raise InvalidArgument(
                f"{what}: key {key[:MAX_KEY_CHARS]!r} is not an environment variable name "
                "(use letters, digits and '_', not starting with a digit)"
            )
        if key.startswith("APOTHIC_"):
            raise InvalidArgument(f"{what}: key {key!r} is reserved (APOTHIC_* variables belong to the runtime)")
        size = len(value.encode())
        if "\x00" in value:
            raise InvalidArgument(f"{what}: the value of {key!r} contains a NUL character")
        if size > MAX_VALUE_BYTES:
            raise InvalidArgument(f"{what}: the value of {key!r} is {size:,} bytes; the limit is {MAX_VALUE_BYTES:,}")
        total += size + len(key)
    if total > MAX_SECRET_BYTES:
        raise InvalidArgument(f"{what} is {total:,} bytes; the limit is {MAX_SECRET_BYTES:,}")


class SecretManager:
    """Creates, lists and deletes secrets, and opens them for container environments.

    Args:
        store: where sealed secrets live.
        key: the Fernet key; :meth:`set_key` sets it when it is known only at start.
    """

    def __init__(self, store: Store, key: bytes | None = None) -> None:
        self.store = store
        self._fernet: Fernet | None = Fernet(key) if key else None

    def set_key(self, key: bytes) -> None:
        """Sets the server key (from :func:`load_key` or the settings)."""
        self._fernet = Fernet(key)

    @property
    def fernet(self) -> Fernet:
        if self._fernet is None:
            self._fernet = Fernet(Fernet.generate_key())
        return self._fernet

    def seal(self, values: Mapping[str, str]) -> bytes:
        """Encrypts a set of values (already validated)."""
        return self.fernet.encrypt(json.dumps(dict(values), sort_keys=True).encode())

    def _open(self, sealed: bytes, what: str) -> dict[str, str]:
        try:
            return dict(json.loads(self.fernet.decrypt(sealed)))
        except InvalidToken:
            raise FailedPrecondition(
                f"{what} cannot be decrypted with this control plane's key (was the state directory's "
                f"{KEY_FILE} replaced?); create it again"
            ) from None

    def seal_inline(self, function: str, values: Mapping[str, str]) -> str:
        """The spec reference for values sent with a deploy (``Secret.from_dict``).

        Raises:
            InvalidArgument: the values are not usable environment variables.
        """
        validate_values(f"function {function!r}: an inline secret", values)
        return INLINE_PREFIX + self.seal(values).decode()

    async def create(
        self, account: str, name: str, values: Mapping[str, str], *, overwrite: bool
    ) -> tuple[SecretInfo, bool]:
        """Creates a secret, or replaces an existing one's values with ``overwrite``.

        Returns:
            The secret and whether an existing one was replaced.

        Raises:
            InvalidArgument: bad name or values.
            AlreadyExists: the secret exists and ``overwrite`` is false.
        """
        validate_name("secret", name)
        validate_values(f"secret {name!r}", values)
        now = utcnow()
        existing = await self.store.get_secret(account, name)
        if existing is not None and not overwrite:
            raise AlreadyExists(f"secret {name!r} already exists; pass overwrite=True (--overwrite) to replace it")
        row = SecretRow(
            account=account,
            name=name,
            keys=tuple(sorted(values)),
            sealed=self.seal(values),
            created_at=existing.created_at if existing is not None else now,
            updated_at=now,
        )
        if existing is None:
            try:
                await self.store.create_secret(row)
            except Exception:
                if await self.store.get_secret(account, name) is None:
                    raise
                if not overwrite:
                    raise AlreadyExists(f"secret {name!r} already exists") from None
                await self.store.replace_secret(row)
        else:
            await self.store.replace_secret(row)
        return _info(row), existing is not None

    async def list(self, account: str) -> list[SecretInfo]:
        """An account's secrets, by name, without values."""
        return [_info(row) for row in await self.store.list_secrets(account)]

    async def delete(self, account: str, name: str) -> None:
        """Deletes a secret.

        Raises:
            InvalidArgument: bad name.
            NotFound: no such secret in this account.
        """
        validate_name("secret", name)
        if not await self.store.delete_secret(account, name):
            raise NotFound(f"secret {name!r} not found")

    async def check_references(self, account: str, function: str, refs: Sequence[str]) -> None:
        """Checks that every secret a function names exists (at deploy).

        Raises:
            NotFound: a named secret does not exist; the message names it.
        """
        for ref in refs:
            if ref.startswith(INLINE_PREFIX):
                continue
            if await self.store.get_secret(account, ref) is None:
                raise NotFound(
                    f"function {function!r} uses secret {ref!r}, which does not exist; "
                    f"create it with `apothic secret create {ref} KEY=VALUE`"
                )

    async def environment(self, account: str, function: str, refs: Sequence[str]) -> dict[str, str]:
        """The environment variables of a function's secrets, in order: a later secret's key
        overrides an earlier one's.

        Raises:
            NotFound: a named secret was deleted since the deploy.
            FailedPrecondition: a secret cannot be decrypted with this key.
        """
        env: dict[str, str] = {}
        for ref in refs:
            if ref.startswith(INLINE_PREFIX):
                env.update(self._open(ref[len(INLINE_PREFIX) :].encode(), f"an inline secret of {function!r}"))
                continue
            row = await self.store.get_secret(account, ref)
            if row is None:
                raise NotFound(f"function {function!r} uses secret {ref!r}, which no longer exists; create it again")
            env.update(self._open(row.sealed, f"secret {ref!r}"))
        return env
