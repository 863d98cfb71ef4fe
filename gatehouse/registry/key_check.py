"""Does this server key belong to this database? Checked whenever a registry opens a store.

Every node of a deployment must seal and digest with the same server key; a node started with
another one would find no device's credentials and answer every login "not authorised". The first
registry to open a database seals a check value with its key; every later one must open it, or
refuses to start, before it serves anyone.
"""
from __future__ import annotations

from ..server_key import ServerKey, ServerKeyError
from ..storage import Store

_CHECK_TEXT = "gatehouse server key check v1"
_CONTEXT = "server_key_check"


def check_server_key(store: Store, key: ServerKey, database: str) -> None:
    sealed = store.server_key_check()
    if sealed is None:
        with store.transaction():
            store.set_server_key_check(key.seal(_CHECK_TEXT, _CONTEXT))
        sealed = store.server_key_check()  # another process may have been first
    try:
        key.open(sealed, _CONTEXT)
    except ServerKeyError:
        raise ServerKeyError(
            f"the server key does not open the secrets of the database {database}: every Gatehouse process of a "
            "deployment must use the same key (copy the data dir's gatehouse.key to each node, or point "
            "--server-key-file at a shared copy)") from None


def opens_check(sealed: bytes, key: ServerKey) -> bool:
    """Whether `key` opens a database's check value (`Store.server_key_check`)."""
    try:
        key.open(sealed, _CONTEXT)
    except ServerKeyError:
        return False
    return True
