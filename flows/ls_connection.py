"""Where Label Studio is and how to prove who we are: :class:`Connection`, :class:`Secret`, errors.

Credentials: ``NUCLEATE_LS_URL`` + ``NUCLEATE_LS_TOKEN`` for an existing server (and
``NUCLEATE_LS_FILES_ROOT``: the server's ``LOCAL_FILES_DOCUMENT_ROOT`` as seen from this machine,
where the images annotators see are written); otherwise the local default server started by
``nucleate ls up`` (url and token from its data dir). The token is kept in a :class:`Secret` and never
appears in logs, errors or reprs.

Errors (raised here and by :mod:`flows.ls_client`): :class:`ServerUnreachable` names the URL after
all retries; :class:`TokenRejected` (HTTP 401) says how to set the token; :class:`UncertainOutcome`
is a request that changes data and broke mid-way; any other HTTP error is a :class:`LabelStudioError`
with the server's ``detail``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flows.ls_server import DEFAULT_DATA_DIR, LocalServer

__all__ = [
    "Secret",
    "Connection",
    "LabelStudioError",
    "ServerUnreachable",
    "TokenRejected",
    "UncertainOutcome",
    "resolve_connection",
]


class Secret:
    """A string that never shows itself: ``repr``/``str`` print ``'********'``; :meth:`reveal` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # pickling would be a way out of the secret
        raise TypeError("Secret values cannot be pickled")


@dataclass(frozen=True)
class Connection:
    """Where Label Studio is: ``url``, API ``token`` (legacy token or personal access token),
    ``files_root`` (its local-files document root on this machine, None if unknown) and a hint for
    error messages about where the token came from."""

    url: str
    token: Secret
    files_root: Path | None = None
    token_hint: str = "set NUCLEATE_LS_TOKEN to a valid API token (Label Studio: Account & Settings -> Access Token)"


class LabelStudioError(RuntimeError):
    """Label Studio answered with an error (the message has the server's detail, never the token)."""


class ServerUnreachable(LabelStudioError):
    """The server did not answer after all retries."""


class TokenRejected(LabelStudioError):
    """HTTP 401: the token is wrong, expired or revoked."""


class UncertainOutcome(LabelStudioError):
    """A request that changes data broke mid-way: it may or may not have taken effect."""


def resolve_connection(data_dir: str | Path = DEFAULT_DATA_DIR, env: Mapping[str, str] | None = None) -> Connection:
    """``NUCLEATE_LS_URL`` (+ ``NUCLEATE_LS_TOKEN``, ``NUCLEATE_LS_FILES_ROOT``) when set, else the local
    server of ``data_dir`` (``nucleate ls up``)."""
    env = os.environ if env is None else env
    url = env.get("NUCLEATE_LS_URL", "").strip()
    if url:
        token = env.get("NUCLEATE_LS_TOKEN", "")
        if not token:
            raise TokenRejected(
                f"NUCLEATE_LS_URL is {url} but NUCLEATE_LS_TOKEN is not set: export NUCLEATE_LS_TOKEN=<API token> "
                "(Label Studio: Account & Settings -> Access Token)"
            )
        root = env.get("NUCLEATE_LS_FILES_ROOT")
        return Connection(url.rstrip("/"), Secret(token), Path(root) if root else None)
    server = LocalServer(Path(data_dir))
    state = server.state()
    if state is None:
        raise ServerUnreachable(
            f"no Label Studio server: start the local one with `nucleate ls up` (data dir {server.data_dir}), "
            "or set NUCLEATE_LS_URL and NUCLEATE_LS_TOKEN for an existing server"
        )
    creds = server.credentials()
    return Connection(
        state["url"], Secret(creds["token"]), server.files_root.resolve(),
        token_hint=f"the local server's token is in {server.data_dir / 'credentials.json'}; if that data dir was "
        "replaced, run `nucleate ls down` then `nucleate ls up`, or set NUCLEATE_LS_URL and NUCLEATE_LS_TOKEN",
    )
