"""Secrets: environment variables a function's containers get, kept encrypted by the
control plane and never printed.

``Secret.from_name("db")`` refers to a secret created with :meth:`Secret.create` (or
``apothic secret create``); the deploy fails when it does not exist. ``Secret.from_dict``
carries values with the deploy itself, sealed by the control plane and never stored by
name. Pass either in ``@app.function(secrets=[...])``; a later secret's key overrides an
earlier one's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from apothic._lazy import get_client
from apothic._sync import run_sync
from apothic.config import ClientConfig
from apothic.exceptions import InvalidConfigError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class SecretInfo:
    """A secret as listed: its name, key names and times, never its values.

    Attributes:
        name: the secret's name.
        keys: the environment variable names it sets, sorted.
        created_at: when it was created.
        updated_at: when its values last changed.
    """

    name: str
    keys: tuple[str, ...]
    created_at: datetime | None
    updated_at: datetime | None


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidConfigError(
            f"secret name {name!r} is invalid: use 1-63 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return name


def _check_values(values: object, what: str) -> dict[str, str]:
    if not isinstance(values, Mapping) or not values:
        raise InvalidConfigError(f"{what} needs a non-empty dict of environment variable names to string values")
    out: dict[str, str] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise InvalidConfigError(
                f"{what}: key {key!r} is not an environment variable name "
                "(use letters, digits and '_', not starting with a digit)"
            )
        if not isinstance(value, str):
            # The message names the key and the type only: never the value.
            raise InvalidConfigError(f"{what}: the value of {key!r} must be a string, got {type(value).__name__}")
        out[key] = value
    return out


class _CreateSecret:
    """``Secret.create(name, values)``; ``await Secret.create.aio(...)`` is the async form."""

    async def aio(
        self, name: str, values: Mapping[str, str], *, overwrite: bool = False, client: ClientConfig | None = None
    ) -> SecretInfo:
        """Creates a named secret, or replaces its values with ``overwrite``.

        Args:
            name: 1-63 letters, digits, ``-`` or ``_``.
            values: environment variable names to values.
            overwrite: replace the values of an existing secret instead of failing.
            client: the control plane to use (the configured one when None).

        Returns:
            The secret, without its values.

        Raises:
            InvalidConfigError: a bad name or values (checked before anything is sent).
            AlreadyExistsError: the secret exists and ``overwrite`` is false.
            InvalidArgumentError: the control plane refused the values (size limits).
        """
        checked = _check_values(values, f"secret {_check_name(name)!r}")
        return await get_client(client).create_secret(name, checked, overwrite=overwrite)  # type: ignore[no-any-return]

    def __call__(
        self, name: str, values: Mapping[str, str], *, overwrite: bool = False, client: ClientConfig | None = None
    ) -> SecretInfo:
        """Creates a named secret, or replaces its values with ``overwrite`` (see :meth:`aio`)."""
        return run_sync(
            self.aio(name, values, overwrite=overwrite, client=client),
            "Secret.create()",
            async_form="await Secret.create.aio(...)",
        )


class _ListSecrets:
    """``Secret.list()``; ``await Secret.list.aio()`` is the async form."""

    async def aio(self, *, client: ClientConfig | None = None) -> list[SecretInfo]:
        """Lists this account's secrets by name, with key names but never values.

        Args:
            client: the control plane to use (the configured one when None).
        """
        return await get_client(client).list_secrets()  # type: ignore[no-any-return]

    def __call__(self, *, client: ClientConfig | None = None) -> list[SecretInfo]:
        """Lists this account's secrets, without values (see :meth:`aio`)."""
        return run_sync(self.aio(client=client), "Secret.list()", async_form="await Secret.list.aio()")


class _DeleteSecret:
    """``Secret.delete(name)``; ``await Secret.delete.aio(name)`` is the async form."""

    async def aio(self, name: str, *, client: ClientConfig | None = None) -> None:
        """Deletes a named secret.

        Args:
            name: the secret's name.
            client: the control plane to use (the configured one when None).

        Raises:
            NotFoundError: no such secret.
        """
        await get_client(client).delete_secret(_check_name(name))

    def __call__(self, name: str, *, client: ClientConfig | None = None) -> None:
        """Deletes a named secret (see :meth:`aio`)."""
        run_sync(self.aio(name, client=client), "Secret.delete()", async_form="await Secret.delete.aio(...)")


class Secret:
    """Environment variables for a function's containers: a named secret of the account
    (:meth:`from_name`) or values sent with the deploy (:meth:`from_dict`).

    Its repr shows the name or the key names, never a value. Manage named secrets with
    ``Secret.create``, ``Secret.list`` and ``Secret.delete``; each has an async form on
    ``.aio`` (``await Secret.create.aio(...)``).

    Example:
        ```python
        apothic.Secret.create("db", {"DB_PASSWORD": "hunter2"})

        @app.function(secrets=[apothic.Secret.from_name("db")])
        def connect() -> str:
            return os.environ["DB_PASSWORD"]
        ```
    """

    #: ``Secret.create(name, values, overwrite=False)``: creates or replaces a named secret.
    create = _CreateSecret()
    #: ``Secret.list()``: the account's secrets, names and key names only.
    list = _ListSecrets()
    #: ``Secret.delete(name)``: deletes a named secret.
    delete = _DeleteSecret()

    __slots__ = ("_keys", "_name", "_values")

    def __init__(self, *, name: str | None = None, values: Mapping[str, str] | None = None) -> None:
        if (name is None) == (values is None):
            raise InvalidConfigError("use Secret.from_name(name) or Secret.from_dict({...})")
        self._name = name
        self._values = dict(values) if values is not None else None
        self._keys = tuple(sorted(self._values)) if self._values is not None else ()

    @classmethod
    def from_name(cls, name: str) -> Secret:
        """A reference to a named secret, resolved when the app is deployed.

        Args:
            name: the secret's name.

        Raises:
            InvalidConfigError: the name is not a valid secret name.
        """
        return cls(name=_check_name(name))

    @classmethod
    def from_dict(cls, values: Mapping[str, str]) -> Secret:
        """Values sent with the deploy (encrypted by the control plane, never stored by name).

        Args:
            values: environment variable names to string values.

        Raises:
            InvalidConfigError: an empty dict, a key that is not an environment variable
                name, or a value that is not a string.
        """
        return cls(values=_check_values(values, "Secret.from_dict"))

    @property
    def name(self) -> str | None:
        """The named secret's name; None for one made with :meth:`from_dict`."""
        return self._name

    @property
    def keys(self) -> tuple[str, ...]:
        """The key names of a :meth:`from_dict` secret (empty for a named one: the control
        plane knows them)."""
        return self._keys

    def _inline_values(self) -> dict[str, str] | None:
        """The values of a :meth:`from_dict` secret, for the deploy request only."""
        return dict(self._values) if self._values is not None else None

    def __repr__(self) -> str:
        if self._name is not None:
            return f"Secret.from_name({self._name!r})"
        return f"Secret.from_dict(<{len(self.keys)} keys: {', '.join(self.keys)}>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self._name == other._name and self._values == other._values

    def __hash__(self) -> int:
        return hash((self._name, self.keys))

    def __reduce__(self) -> tuple[object, ...]:
        # A function shipped by value may hold a Secret in its closure or globals: its
        # pickle must not carry the values (they would be stored with the deployment).
        # The copy keeps the name and key names; containers read values from os.environ.
        return (_redacted, (self._name, self._keys))


def _redacted(name: str | None, keys: tuple[str, ...]) -> Secret:
    """An unpickled Secret: a named one as it was, an inline one without its values."""
    secret = object.__new__(Secret)
    secret._name, secret._values, secret._keys = name, None, tuple(keys)
    return secret
