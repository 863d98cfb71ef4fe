"""Who an MQTT client with a client id, user name and password is (SPEC §1.3, §2.1, §9.2), as pure
functions with no registry: ThingsBoard's lookup order in `authenticate_basic`, through lookups
injected here and recorded in the order they happen, the stored-parts check `check_basic`, and
which refusal a client gets when nothing matched. The same logins against a real registry are in
test_credentials.py."""
from __future__ import annotations

import pytest

from gatehouse.credentials import (
    BasicCheck,
    MqttBasic,
    StoredCredentials,
    authenticate_basic,
    basic_lookup_ids,
    check_basic,
    sha3_hash,
)
from gatehouse.login import LoginOutcome, is_provision_login, refusal_for_unknown_credentials
from gatehouse.models import CredentialsType


def digest(part: str) -> bytes:
    """A stand-in for the server key's digest of a stored part; `matches` below checks it."""
    return b"digest:" + part.encode()


def matches(value: str, stored: bytes | None) -> bool:
    return stored is not None and digest(value) == stored


def basic(device_id: str, client_id: str | None, user_name: str | None, password: str | None):
    """An MQTT basic credential as the store holds it: (credentials id, what a lookup finds)."""
    credentials_id = MqttBasic(client_id, user_name, password).credentials_id
    return credentials_id, StoredCredentials(device_id, CredentialsType.MQTT_BASIC,
                                             *(digest(part) if part else None for part in (client_id, user_name,
                                                                                           password)))


def token(device_id: str, value: str):
    return value, StoredCredentials(device_id, CredentialsType.ACCESS_TOKEN)


def certificate(device_id: str, credentials_id: str):
    return credentials_id, StoredCredentials(device_id, CredentialsType.X509_CERTIFICATE)


def H(*parts: str) -> str:
    return sha3_hash(*parts)


CLIENT_ONLY = basic("client-only", "c1", None, None)
CLIENT_USER = basic("client-user", "c1", "u1", None)
TRIPLE = basic("triple", "c1", "u1", "p1")
USER_PASSWORD = basic("user-password", None, "u1", "p1")
USER_ONLY = basic("user-only", None, "u1", None)
TOKEN_U1 = token("token-u1", "u1")
TOKEN_C1 = token("token-c1", "c1")
# A client-id-only credential whose client id is "c1|u1" has the credentials id of (c1, u1): the
# first lookup for c1 + u1 finds it, and its parts do not match.
CLIENT_ID_WITH_BAR = basic("client-with-bar", "c1|u1", None, None)
TOKEN_AT_FIRST_LOOKUP = token("token-at-hash", H("c1", "u1"))
CERTIFICATE_U1 = certificate("x509", "u1")


@pytest.mark.parametrize("stored, client_id, username, password, device, lookups", [
    # no user name: the client id's hash only, never an access token
    pytest.param([CLIENT_ONLY], "c1", None, None, "client-only", [H("c1")], id="client id only"),
    pytest.param([CLIENT_ONLY], "c1", "", None, "client-only", [H("c1")], id="client id only, empty user name"),
    pytest.param([CLIENT_ONLY], "c1", None, "any", "client-only", [H("c1")],
                 id="client id only, a password nobody stored"),
    pytest.param([CLIENT_ONLY], "c2", None, None, None, [H("c2")], id="unknown client id"),
    pytest.param([TOKEN_C1], "c1", None, None, None, [H("c1")], id="client id equal to a token: no token fallback"),
    pytest.param([CLIENT_USER], "c1", None, None, None, [H("c1")], id="client id of a client id + user name credential"),
    # client id + user name: their hash first, then the user name alone
    pytest.param([CLIENT_ONLY], "c1", "someone", None, None, [H("c1", "someone"), "someone"],
                 id="client id only credential, a user name sent"),
    pytest.param([CLIENT_USER], "c1", "u1", None, "client-user", [H("c1", "u1")], id="client id + user name"),
    pytest.param([CLIENT_USER, TOKEN_U1], "c1", "u1", None, "client-user", [H("c1", "u1")],
                 id="client id + user name win over an equal access token"),
    pytest.param([CLIENT_USER], "c1", "u1", "extra", "client-user", [H("c1", "u1")],
                 id="client id + user name, a password nobody stored"),
    pytest.param([CLIENT_USER, TOKEN_U1], "c2", "u1", None, "token-u1", [H("c2", "u1"), "u1"],
                 id="another client id: the user name as a token"),
    pytest.param([CLIENT_USER], "c2", "u1", None, None, [H("c2", "u1"), "u1"],
                 id="another client id, no such token"),
    pytest.param([TRIPLE], "c1", "u1", "p1", "triple", [H("c1", "u1")], id="client id + user name + password"),
    pytest.param([TRIPLE, TOKEN_U1], "c1", "u1", "wrong", None, [H("c1", "u1")],
                 id="wrong password: refused, no token fallback"),
    pytest.param([TRIPLE, TOKEN_U1], "c1", "u1", None, None, [H("c1", "u1")],
                 id="no password: refused, no token fallback"),
    pytest.param([CLIENT_ID_WITH_BAR, TOKEN_U1], "c1", "u1", None, "token-u1", [H("c1", "u1"), "u1"],
                 id="first lookup finds other parts: the user name as a token"),
    pytest.param([TOKEN_AT_FIRST_LOOKUP, TOKEN_U1], "c1", "u1", None, "token-u1", [H("c1", "u1"), "u1"],
                 id="first lookup finds an access token: the user name as a token"),
    # user name only credentials: found by the user name, with any client id
    pytest.param([USER_PASSWORD], "any", "u1", "p1", "user-password", [H("any", "u1"), "u1"],
                 id="user name + password, any client id"),
    pytest.param([USER_PASSWORD], "", "u1", "p1", "user-password", [H("u1"), "u1"],
                 id="user name + password, empty client id"),
    pytest.param([USER_PASSWORD], "any", "u1", "wrong", None, [H("any", "u1"), "u1"],
                 id="user name, wrong password"),
    pytest.param([USER_PASSWORD], "any", "u1", None, None, [H("any", "u1"), "u1"], id="user name, no password"),
    pytest.param([USER_ONLY], "any", "u1", "extra", "user-only", [H("any", "u1"), "u1"],
                 id="user name only, a password nobody stored"),
    # access tokens: the user name; client id and password are ignored
    pytest.param([TOKEN_U1], "random", "u1", "random", "token-u1", [H("random", "u1"), "u1"],
                 id="token, random client id and password"),
    pytest.param([TOKEN_U1], "", "u1", None, "token-u1", [H("u1"), "u1"], id="token, empty client id"),
    pytest.param([TOKEN_U1], "c1", "u2", None, None, [H("c1", "u2"), "u2"], id="wrong token"),
    pytest.param([CERTIFICATE_U1], "c1", "u1", None, None, [H("c1", "u1"), "u1"],
                 id="user name equal to a certificate's id: refused"),
])
def test_basic_login_looks_up_in_thingsboards_order(stored, client_id, username, password, device, lookups):
    records = dict(stored)
    looked_up = []

    def find(credentials_id: str) -> StoredCredentials | None:
        looked_up.append(credentials_id)
        return records.get(credentials_id)

    found = authenticate_basic(client_id, username, password, find=find, matches=matches)
    assert (found.device_id if found else None, looked_up) == (device, lookups)
    # What a networked store fetches in one round trip, up front, covers every lookup.
    assert looked_up == basic_lookup_ids(client_id, username)[:len(looked_up)]


@pytest.mark.parametrize("stored, client_id, username, password, expected", [
    pytest.param(TRIPLE, "c1", "u1", "p1", BasicCheck.VALID, id="every part right"),
    pytest.param(TRIPLE, "c2", "u1", "p1", BasicCheck.HASH_MISMATCH, id="another client id"),
    pytest.param(TRIPLE, "c1", "u2", "p1", BasicCheck.HASH_MISMATCH, id="another user name"),
    pytest.param(TRIPLE, "c1", None, "p1", BasicCheck.HASH_MISMATCH, id="no user name"),
    pytest.param(TRIPLE, "c2", "u1", "wrong", BasicCheck.HASH_MISMATCH, id="parts are checked before the password"),
    pytest.param(TRIPLE, "c1", "u1", "wrong", BasicCheck.PASSWORD_MISMATCH, id="wrong password"),
    pytest.param(TRIPLE, "c1", "u1", None, BasicCheck.PASSWORD_MISMATCH, id="no password"),
    pytest.param(TRIPLE, "c1", "u1", "", BasicCheck.PASSWORD_MISMATCH, id="empty password"),
    pytest.param(CLIENT_USER, "c1", "u1", "extra", BasicCheck.VALID, id="a password nobody stored"),
    pytest.param(USER_PASSWORD, "any", "u1", "p1", BasicCheck.VALID, id="no client id stored: any"),
    pytest.param(CLIENT_ONLY, "c1", "anyone", None, BasicCheck.VALID, id="no user name stored: any"),
])
def test_stored_parts_are_checked_client_id_user_name_then_password(stored, client_id, username, password, expected):
    assert check_basic(stored[1], client_id, username, password, matches) is expected


# --- what a client gets when nothing matched (SPEC §2.1) ---------------------------------------------

@pytest.mark.parametrize("client_id, username, password, outcome", [
    pytest.param("c1", "u1", "p1", LoginOutcome.BAD_USERNAME_OR_PASSWORD, id="user name and password"),
    pytest.param("c1", "u1", None, LoginOutcome.BAD_USERNAME_OR_PASSWORD, id="user name only"),
    pytest.param("c1", None, "p1", LoginOutcome.BAD_USERNAME_OR_PASSWORD, id="password only"),
    pytest.param("", "u1", None, LoginOutcome.BAD_USERNAME_OR_PASSWORD, id="user name, no client id"),
    pytest.param("c1", None, None, LoginOutcome.CLIENT_ID_NOT_VALID, id="client id only"),
    pytest.param("   ", None, None, LoginOutcome.NOT_AUTHORIZED, id="blank client id"),
    pytest.param("", None, None, LoginOutcome.NOT_AUTHORIZED, id="nothing"),
    pytest.param(None, None, None, LoginOutcome.NOT_AUTHORIZED, id="no client id at all"),
])
def test_the_refusal_follows_what_was_supplied(client_id, username, password, outcome):
    assert refusal_for_unknown_credentials(client_id, username, password) is outcome


@pytest.mark.parametrize("client_id, username, expected", [
    pytest.param("c1", "provision", True, id="user name provision"),
    pytest.param("provision", None, True, id="client id provision"),
    pytest.param("provision", "TOKEN", True, id="client id provision with a token"),
    pytest.param("c1", "Provision", False, id="another case"),
    pytest.param("c1", " provision", False, id="with a space"),
    pytest.param("c1", None, False, id="neither"),
])
def test_provision_as_user_name_or_client_id_is_a_provisioning_session(client_id, username, expected):
    assert is_provision_login(client_id, username) is expected
