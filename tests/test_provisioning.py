"""Device provisioning: ThingsBoard's key/secret strategy table (SPEC §3.2–§3.6, §9.1) and
X.509 certificate-chain provisioning (§1.4.2), through the registry on a real SQLite file."""
import multiprocessing
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from gatehouse.certificates import base64_body, der_bytes
from gatehouse.credentials import AccessToken, MqttBasic, X509Certificate, certificate_thumbprint, sha3_hash
from gatehouse.data_dir import DataDir
from gatehouse.errors import NotFoundError, ValidationError
from gatehouse.login import LoginOutcome
from gatehouse.models import AttributeScope, CredentialsType, ProvisionType
from gatehouse.payloads import kv_entries
from gatehouse.pki import certificate_pem, create_ca, issue_certificate
from gatehouse.provisioning import ProvisionRequest, ProvisionRequestError, ProvisionStatus
from gatehouse.registry import Registry

from .provisioning_answers import FAILURE_JSON, NOT_FOUND_JSON

# Each test that uses the store runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.both_stores

SUCCESS, NOT_FOUND, FAILURE = ProvisionStatus.SUCCESS, ProvisionStatus.NOT_FOUND, ProvisionStatus.FAILURE

ALLOW_KEY, ALLOW_SECRET = "allowProvisionKey", "allow-Secret-7f3a9c"
CHECK_KEY, CHECK_SECRET = "checkProvisionKey", "check-Secret-2b8d4e"


# --- helpers ---------------------------------------------------------------------------------

@pytest.fixture
def allow(registry):
    return registry.create_profile("allow-profile", ProvisionType.ALLOW_CREATE_NEW_DEVICES,
                                   key=ALLOW_KEY, secret=ALLOW_SECRET)


@pytest.fixture
def check(registry):
    return registry.create_profile("check-profile", ProvisionType.CHECK_PRE_PROVISIONED_DEVICES,
                                   key=CHECK_KEY, secret=CHECK_SECRET)


def request_json(profile, **fields) -> dict:
    """A request carrying the profile's key and secret; `fields` may override either."""
    return {"provisionDeviceKey": profile.provision_device_key,
            "provisionDeviceSecret": profile.provision_device_secret, **fields}


def provision(registry, profile, **fields):
    return registry.provision(ProvisionRequest.from_json(request_json(profile, **fields)))


def provision_raw(registry, obj: dict, **kwargs):
    return registry.provision(ProvisionRequest.from_json(obj), **kwargs)


def provision_state(registry, device_id):
    return registry.get_attributes(device_id, AttributeScope.SERVER).get("provisionState")


def set_provision_state(registry, device_id, value):
    registry.save_attributes(device_id, AttributeScope.SERVER, kv_entries({"provisionState": value}))


def open_own_registry(deployment: DataDir) -> Registry:
    """A second, independent connection to the same database, as another process would have."""
    return Registry.open(deployment)


# --- §3.4 pre-checks, in ThingsBoard's order -------------------------------------------------

def test_blank_device_name_fails_before_key_and_secret_are_looked_at(registry, allow):
    # Empty key and secret would be NOT_FOUND; FAILURE proves the name check comes first.
    result = provision_raw(registry, {"provisionDeviceKey": "", "provisionDeviceSecret": "", "deviceName": "   "})
    assert result.to_json() == FAILURE_JSON
    assert provision(registry, allow, deviceName="   ").status is FAILURE
    assert registry.count_devices() == 0


@pytest.mark.parametrize("override", [{"provisionDeviceKey": ""}, {"provisionDeviceSecret": ""}],
                         ids=["empty-key", "empty-secret"])
def test_empty_key_or_secret_is_not_found(registry, allow, override):
    result = provision(registry, allow, deviceName="dev", **override)
    assert result.to_json() == NOT_FOUND_JSON
    assert registry.count_devices() == 0


def test_unknown_key_is_not_found(registry, allow):
    result = provision(registry, allow, deviceName="dev", provisionDeviceKey="noSuchKey")
    assert result.to_json() == NOT_FOUND_JSON
    assert registry.count_devices() == 0


def test_disabled_profile_is_not_found(registry):
    # A DISABLED profile carries no key, so ThingsBoard's own test (a DISABLED profile and a
    # request with some key) can only ever miss it.
    registry.create_profile("disabled-profile", ProvisionType.DISABLED)
    result = provision_raw(registry, {"provisionDeviceKey": "testProvisionKey",
                                      "provisionDeviceSecret": "testProvisionSecret", "deviceName": "dev"})
    assert result.to_json() == {"errorMsg": "Provision data was not found!", "status": "NOT_FOUND"}
    assert registry.count_devices() == 0


@pytest.mark.parametrize("profile_fixture", ["allow", "check"])
def test_wrong_secret_is_not_found_not_failure(registry, request, profile_fixture):
    profile = request.getfixturevalue(profile_fixture)
    registry.create_device("dev", profile=profile.name)  # so CHECK_PRE would otherwise succeed
    result = provision(registry, profile, deviceName="dev", provisionDeviceSecret="wrong-secret")
    assert result.to_json() == NOT_FOUND_JSON
    assert provision_state(registry, registry.get_device("dev").id) is None


# --- ALLOW_CREATE_NEW_DEVICES ----------------------------------------------------------------

def test_allow_create_without_credentials_issues_a_stored_access_token(registry, allow):
    result = provision(registry, allow, deviceName="new-device")
    assert result.status is SUCCESS and result.credentials_type is CredentialsType.ACCESS_TOKEN
    device = registry.get_device("new-device")
    assert device.profile_id == allow.id
    assert result.credentials_value == registry.get_credentials(device.id).credentials_id
    assert registry.token_login(result.credentials_value).id == device.id
    assert provision_state(registry, device.id) == "provisioned"


def test_success_response_keys_follow_thingsboard_order(registry, allow):
    answer = provision(registry, allow, deviceName="ordered").to_json()
    assert list(answer) == ["credentialsValue", "credentialsType", "status", "deviceId", "deviceName"]
    assert answer["status"] == "SUCCESS" and answer["credentialsType"] == "ACCESS_TOKEN"
    assert answer["deviceId"] == registry.get_device("ordered").id and answer["deviceName"] == "ordered"


def test_missing_device_name_gets_a_generated_one(registry, allow):
    result = provision(registry, allow)
    assert result.status is SUCCESS
    assert re.fullmatch(r"[A-Za-z0-9]{20}", result.device_name)
    assert registry.get_device(result.device_name).id == result.device_id


def test_device_name_is_trimmed(registry, allow):
    assert provision(registry, allow, deviceName="  padded  ").device_name == "padded"
    assert registry.find_device("padded") is not None


def test_device_names_are_trimmed_as_java_trims_them(registry, allow):
    # Only characters up to U+0020 go: a name that is one too long stays too long after a
    # leading U+0085, which Python's str.strip (but not Java's String.trim) would remove.
    assert provision(registry, allow, deviceName="\u00a0nbsp\t").device_name == "\u00a0nbsp"
    too_long = provision(registry, allow, deviceName="\u0085" + "n" * 255)
    assert too_long.status is FAILURE and "at most 255 characters" in too_long.reason
    with pytest.raises(ValidationError, match="at most 255 characters"):
        registry.create_device("\u0085" + "d" * 255)


def test_gateway_flag_is_stored_as_boolean(registry, allow):
    provision(registry, allow, deviceName="gw", gateway=True)
    provision(registry, allow, deviceName="plain")
    assert registry.get_device("gw").additional_info["gateway"] is True
    assert "gateway" not in registry.get_device("plain").additional_info


def test_requested_access_token_is_used(registry, allow):
    result = provision(registry, allow, deviceName="tok", credentialsType="ACCESS_TOKEN", token="test_token")
    assert (result.status, result.credentials_value) == (SUCCESS, "test_token")
    assert registry.get_credentials("tok").credentials_id == "test_token"
    assert registry.token_login("test_token").name == "tok"


def test_requested_x509_hash_is_stored_verbatim(registry, allow):
    # ThingsBoard's test stores the literal "testHash": no certificate parsing on this path.
    result = provision(registry, allow, deviceName="x509", credentialsType="X509_CERTIFICATE", hash="testHash")
    assert (result.status, result.credentials_type, result.credentials_value) == (
        SUCCESS, CredentialsType.X509_CERTIFICATE, "testHash")
    stored = registry.get_credentials("x509")
    assert stored.credentials_value == "testHash"
    assert stored.credentials_id == sha3_hash("testHash")


def test_requested_mqtt_basic_credentials(registry, allow):
    result = provision(registry, allow, deviceName="basic", credentialsType="MQTT_BASIC",
                       clientId="clientId", username="username", password="password")
    assert result.status is SUCCESS and result.credentials_type is CredentialsType.MQTT_BASIC
    # In the response the value is an object, not the stored JSON string (§3.3).
    assert result.credentials_value == {"clientId": "clientId", "userName": "username", "password": "password"}
    assert registry.get_credentials("basic").credentials_id == sha3_hash("clientId|username")
    login = registry.mqtt_login("clientId", "username", "password")
    assert login.outcome is LoginOutcome.ACCEPTED and login.device.name == "basic"


def test_mqtt_basic_type_without_fields_yields_an_access_token(registry, allow):
    result = provision(registry, allow, deviceName="no-fields", credentialsType="MQTT_BASIC")
    assert result.status is SUCCESS and result.credentials_type is CredentialsType.ACCESS_TOKEN
    assert registry.get_credentials("no-fields").credentials_type is CredentialsType.ACCESS_TOKEN
    assert re.fullmatch(r"[A-Za-z0-9]{20}", result.credentials_value)


def test_existing_name_in_any_profile_fails(registry, allow):
    registry.create_device("taken")  # in the default profile, not in `allow`
    provision(registry, allow, deviceName="mine")
    for name in ("taken", "mine"):
        assert provision(registry, allow, deviceName=name).to_json() == {
            "errorMsg": "Failed to provision device!", "status": "FAILURE"}
    assert registry.count_devices() == 2


def test_token_of_another_device_fails_and_leaves_no_device(registry, allow):
    registry.create_device("owner", credentials=AccessToken("shared_token"))
    result = provision(registry, allow, deviceName="thief", token="shared_token")
    assert result.to_json() == FAILURE_JSON
    assert registry.find_device("thief") is None
    assert registry.count_devices() == 1
    assert registry.token_login("shared_token").name == "owner"


def test_mqtt_basic_client_id_with_password_but_no_username_fails(registry, allow):
    result = provision(registry, allow, deviceName="bad-basic", credentialsType="MQTT_BASIC",
                       clientId="cid", password="pw")
    assert result.to_json() == FAILURE_JSON
    assert registry.count_devices() == 0


# --- CHECK_PRE_PROVISIONED_DEVICES -----------------------------------------------------------

def test_pre_provisioned_device_gets_its_existing_credentials(registry, check):
    device = registry.create_device("pre", profile=check.name, credentials=AccessToken("pre_token"))
    # Credentials in the request are ignored on this strategy.
    result = provision(registry, check, deviceName="pre", token="other_token")
    assert (result.status, result.credentials_type, result.credentials_value) == (
        SUCCESS, CredentialsType.ACCESS_TOKEN, "pre_token")
    assert result.device_id == device.id
    assert registry.get_credentials("pre").credentials_id == "pre_token"
    assert registry.token_login("other_token") is None
    assert provision_state(registry, device.id) == "provisioned"


def test_pre_provisioned_device_provisions_only_once(registry, check):
    registry.create_device("pre", profile=check.name)
    assert provision(registry, check, deviceName="pre").status is SUCCESS
    assert provision(registry, check, deviceName="pre").to_json() == FAILURE_JSON


def test_pre_provisioned_device_with_unknown_state_fails(registry, check):
    device = registry.create_device("pre", profile=check.name)
    set_provision_state(registry, device.id, "non-valid")
    assert provision(registry, check, deviceName="pre").to_json() == FAILURE_JSON
    assert provision_state(registry, device.id) == "non-valid"


def test_pre_provisioning_needs_the_device_in_this_profile(registry, check):
    registry.create_device("elsewhere")  # default profile
    assert provision(registry, check, deviceName="elsewhere").to_json() == FAILURE_JSON
    assert provision(registry, check, deviceName="missing").to_json() == FAILURE_JSON
    assert registry.count_devices() == 1


def test_pre_provisioned_mqtt_basic_answers_an_object(registry, check):
    registry.create_device("pre-basic", profile=check.name, credentials=MqttBasic("cid", "user", "pw"))
    result = provision(registry, check, deviceName="pre-basic")
    assert result.credentials_type is CredentialsType.MQTT_BASIC
    assert result.credentials_value == {"clientId": "cid", "userName": "user", "password": "pw"}


def test_pre_provisioned_x509_answers_the_base64_body(registry, check):
    ca, ca_key = create_ca("Pre-provisioned CA")
    cert, _ = issue_certificate(ca, ca_key, "pre-x509")
    registry.create_device("pre-x509", profile=check.name, credentials=X509Certificate(base64_body(cert)))
    result = provision(registry, check, deviceName="pre-x509")
    assert result.credentials_type is CredentialsType.X509_CERTIFICATE
    assert result.credentials_value == base64_body(cert)


# --- requests ThingsBoard cannot process (§3.4 last row, §3.6) ---------------------------------

def test_key_secret_request_against_a_chain_profile_is_an_error(registry):
    ca, _ = create_ca("Chain CA")
    profile = registry.create_profile("chain", ProvisionType.X509_CERTIFICATE_CHAIN,
                                      ca_certificate_pem=certificate_pem(ca))
    with pytest.raises(ProvisionRequestError, match="Invalid provision strategy type!"):
        provision(registry, profile, deviceName="dev")
    assert registry.count_devices() == 0


@pytest.mark.parametrize("obj", [
    ["provisionDeviceKey", "provisionDeviceSecret"],
    "provisionDeviceKey",
    {"provisionDeviceSecret": "s"},
    {"provisionDeviceKey": "k"},
    {"provisionDeviceKey": "k", "provisionDeviceSecret": "s", "credentialsType": "BOGUS"},
    {"provisionDeviceKey": "k", "provisionDeviceSecret": "s", "deviceName": {"nested": "object"}},
], ids=["array", "string", "no-key", "no-secret", "unknown-type", "object-field"])
def test_malformed_requests_are_hard_errors(obj):
    with pytest.raises(ProvisionRequestError):
        ProvisionRequest.from_json(obj)


def test_scalar_fields_read_as_strings_like_gson():
    request = ProvisionRequest.from_json({"provisionDeviceKey": 12345, "provisionDeviceSecret": True,
                                          "deviceName": 4.5, "token": 0, "password": False})
    assert (request.provision_device_key, request.provision_device_secret) == ("12345", "true")
    assert (request.device_name, request.token, request.password) == ("4.5", "0", "false")
    assert request.credentials_type is CredentialsType.ACCESS_TOKEN  # the default


def test_numeric_key_and_secret_match_a_profile(registry):
    registry.create_profile("numeric", ProvisionType.ALLOW_CREATE_NEW_DEVICES, key="12345", secret="67890")
    result = provision_raw(registry, {"provisionDeviceKey": 12345, "provisionDeviceSecret": 67890, "deviceName": 7})
    assert result.status is SUCCESS and result.device_name == "7"


# --- atomicity and concurrency ---------------------------------------------------------------

def race(deployment, workers: int, request_for):
    """Provision `request_for(i)` from `workers` threads, each on its own connection, released
    together so that all of them read before any of them writes if nothing serialises them."""
    barrier = threading.Barrier(workers)

    def work(i):
        with open_own_registry(deployment) as own:
            barrier.wait(timeout=30)
            return own.provision(ProvisionRequest.from_json(request_for(i)))

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(work, range(workers)))


def test_concurrent_threads_creating_one_name_yield_one_device(registry, allow, deployment):
    results = race(deployment, 8, lambda i: request_json(allow, deviceName="contested"))
    statuses = sorted(r.status.value for r in results)
    assert statuses == ["FAILURE"] * 7 + ["SUCCESS"]
    assert registry.count_devices() == 1
    winner = next(r for r in results if r.status is SUCCESS)
    assert registry.get_device("contested").id == winner.device_id


def test_concurrent_threads_creating_different_names(registry, allow, deployment):
    # 4 threads, each provisioning its own slice of 50 names one after the other.
    names = [f"bulk-{n:02d}" for n in range(50)]

    def slice_of(i):
        with open_own_registry(deployment) as own:
            return [own.provision(ProvisionRequest.from_json(request_json(allow, deviceName=name)))
                    for name in names[i::4]]

    with ThreadPoolExecutor(4) as pool:
        results = [r for chunk in pool.map(slice_of, range(4)) for r in chunk]
    assert all(r.status is SUCCESS for r in results)
    assert registry.count_devices() == 50
    credentials_rows = registry.store._scalar("SELECT count(*) FROM device_credentials")
    assert credentials_rows == 50
    tokens = {registry.get_credentials(name).credentials_id for name in names}
    assert len(tokens) == 50
    assert tokens == {r.credentials_value for r in results}


def _provision_in_process(deployment, request, barrier, statuses):
    # Runs in a spawned child: module level so that it can be pickled by name.
    with open_own_registry(deployment) as own:
        barrier.wait(timeout=60)
        statuses.put(own.provision(ProvisionRequest.from_json(request)).status.value)


def test_concurrent_processes_creating_one_name_yield_one_device(registry, allow, deployment):
    context = multiprocessing.get_context("spawn")
    barrier, statuses = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_provision_in_process,
                                 args=(deployment, request_json(allow, deviceName="contested"), barrier, statuses))
                 for _ in range(4)]
    for process in processes:
        process.start()
    results = sorted(statuses.get(timeout=90) for _ in processes)
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert results == ["FAILURE"] * 3 + ["SUCCESS"]
    assert registry.count_devices() == 1


# --- provisioning events ---------------------------------------------------------------------

def test_every_attempt_is_recorded_without_the_secret(registry, allow):
    on_http = {"transport": "HTTP", "remote_address": "10.0.0.5"}
    attempts = [
        (request_json(allow, deviceName="evented"), "SUCCESS"),
        (request_json(allow, deviceName="evented", provisionDeviceSecret="wrong-Secret-e1"), "NOT_FOUND"),
        (request_json(allow, deviceName="evented"), "FAILURE"),
    ]
    for obj, _ in attempts:
        provision_raw(registry, obj, **on_http)

    events = registry.provisioning_events()
    assert [e["outcome"] for e in events] == [outcome for _, outcome in attempts]
    device_id = registry.get_device("evented").id
    for event in events:
        assert (event["strategy"], event["transport"], event["remote_address"]) == (
            "ALLOW_CREATE_NEW_DEVICES", "HTTP", "10.0.0.5")
        assert event["profile_id"] == allow.id
        for value in event.values():
            assert ALLOW_SECRET not in str(value) and "wrong-Secret-e1" not in str(value)
    assert events[0]["device_id"] == device_id
    assert events[0]["device_name"] == "evented"


def test_unknown_key_attempt_is_recorded(registry):
    provision_raw(registry, {"provisionDeviceKey": "ghost", "provisionDeviceSecret": "ghost-Secret-9",
                             "deviceName": "ghost-device"}, transport="COAP", remote_address="10.0.0.6")
    [event] = registry.provisioning_events()
    assert (event["outcome"], event["strategy"], event["transport"], event["remote_address"]) == (
        "NOT_FOUND", None, "COAP", "10.0.0.6")
    assert all("ghost-Secret-9" not in str(value) for value in event.values())


# --- §1.4.2 X.509 certificate-chain provisioning -----------------------------------------------

COMPANY_REGEX = r"(.*)\.company.com"


@pytest.fixture
def ca():
    return create_ca("Gatehouse Test Device CA")


def chain_profile(registry, ca, *, name="chain", cn_regex=COMPANY_REGEX, allow_create=True):
    return registry.create_profile(name, ProvisionType.X509_CERTIFICATE_CHAIN,
                                   ca_certificate_pem=certificate_pem(ca[0]), cn_regex=cn_regex,
                                   allow_create=allow_create)


def leaf(ca, common_name, **kwargs):
    cert, _ = issue_certificate(*ca, common_name, **kwargs)
    return cert


def cert_login(registry, cert):
    return registry.mqtt_login("any-client-id", None, None, cert_der=der_bytes(cert))


def test_a_read_only_login_refuses_an_unknown_certificate_instead_of_provisioning(registry, ca):
    # The broker logs in on a read-only connection first and leaves provisioning (a write)
    # to its database thread.
    chain_profile(registry, ca)
    cert = leaf(ca, "DeviceR.company.com")
    result = registry.mqtt_login("c", None, None, cert_der=der_bytes(cert), provision=False)
    assert result.outcome is LoginOutcome.NOT_AUTHORIZED
    assert registry.count_devices() == 0 and registry.provisioning_events() == []
    assert cert_login(registry, cert).outcome is LoginOutcome.ACCEPTED


def test_chain_profile_key_is_the_sha3_of_its_ca(registry, ca):
    profile = chain_profile(registry, ca)
    assert profile.provision_device_key == sha3_hash(certificate_pem(ca[0]))
    assert profile.provision_device_key == certificate_thumbprint(der_bytes(ca[0]))


def test_first_login_creates_the_device_and_later_logins_find_it(registry, ca):
    profile = chain_profile(registry, ca)
    cert = leaf(ca, "DeviceA.company.com")
    first = cert_login(registry, cert)
    assert first.outcome is LoginOutcome.ACCEPTED and first.device.name == "DeviceA"
    assert first.device.profile_id == profile.id
    stored = registry.get_credentials("DeviceA")
    assert stored.credentials_type is CredentialsType.X509_CERTIFICATE
    assert stored.credentials_value == base64_body(cert)
    assert stored.credentials_id == certificate_thumbprint(der_bytes(cert))

    second = cert_login(registry, cert)
    assert second.outcome is LoginOutcome.ACCEPTED and second.device.id == first.device.id
    assert registry.count_devices() == 1


@pytest.mark.parametrize("common_name, cn_regex, device_name", [
    ("DeviceA.company.com", r"(.*)\.company.com", "DeviceA"),
    ("region.DeviceA.220423@company.com", r"\D+\.(.*)\.\d+@company.com", "DeviceA"),
    ("deviceCertificate@X509ProvisionStrategy", r"([^@]+)", "deviceCertificate"),
])
def test_device_name_comes_from_the_cn_regex(registry, ca, common_name, cn_regex, device_name):
    chain_profile(registry, ca, cn_regex=cn_regex)
    result = registry.provision_by_certificate(der_bytes(leaf(ca, common_name)))
    assert (result.status, result.device_name) == (SUCCESS, device_name)
    assert registry.find_device(device_name) is not None


def test_cn_not_matching_the_regex_fails(registry, ca):
    chain_profile(registry, ca)
    cert = leaf(ca, "DeviceA.other.org")
    assert registry.provision_by_certificate(der_bytes(cert)).status is FAILURE
    assert cert_login(registry, cert).outcome is LoginOutcome.NOT_AUTHORIZED
    assert registry.count_devices() == 0


def test_new_leaf_for_an_x509_device_rotates_its_credentials(registry, ca):
    chain_profile(registry, ca)
    old, new = leaf(ca, "DeviceA.company.com"), leaf(ca, "DeviceA.company.com")
    device = registry.create_device("DeviceA", profile="chain", credentials=X509Certificate(base64_body(old)))

    login = cert_login(registry, new)
    assert login.outcome is LoginOutcome.ACCEPTED and login.device.id == device.id
    assert registry.get_credentials("DeviceA").credentials_value == base64_body(new)
    # The old certificate no longer identifies the device. (Presenting it again would rotate
    # back, as in ThingsBoard: it is still a valid leaf of the profile's CA.)
    assert registry.certificate_device(der_bytes(old)) is None
    assert registry.count_devices() == 1
    # ThingsBoard sets no provisionState on this branch.
    assert provision_state(registry, device.id) is None


def test_existing_token_device_keeps_its_credentials(registry, ca):
    chain_profile(registry, ca)
    registry.create_device("DeviceA", profile="chain", credentials=AccessToken("device-a-token"))
    result = registry.provision_by_certificate(der_bytes(leaf(ca, "DeviceA.company.com")))
    assert (result.status, result.credentials_type, result.credentials_value) == (
        SUCCESS, CredentialsType.ACCESS_TOKEN, "device-a-token")
    assert registry.get_credentials("DeviceA").credentials_id == "device-a-token"


def test_certificate_login_to_a_token_device_is_refused(registry, ca):
    # §1.4.1/§1.4.2 step 4: provisioning SUCCESS is not a login; CONNECT then looks the leaf
    # up by its hash, and a token device has no such credentials.
    chain_profile(registry, ca)
    registry.create_device("DeviceA", profile="chain", credentials=AccessToken("device-a-token"))
    assert cert_login(registry, leaf(ca, "DeviceA.company.com")).outcome is LoginOutcome.NOT_AUTHORIZED
    assert registry.get_credentials("DeviceA").credentials_id == "device-a-token"


def test_unknown_device_is_not_created_when_the_profile_forbids_it(registry, ca):
    chain_profile(registry, ca, allow_create=False)
    cert = leaf(ca, "DeviceA.company.com")
    assert registry.provision_by_certificate(der_bytes(cert)).status is FAILURE
    assert cert_login(registry, cert).outcome is LoginOutcome.NOT_AUTHORIZED
    assert registry.count_devices() == 0


def test_leaf_of_an_impostor_ca_with_the_same_name_is_not_found(registry, ca):
    chain_profile(registry, ca)
    impostor = create_ca(ca[0].subject.rfc4514_string().removeprefix("CN="))
    assert impostor[0].subject == ca[0].subject  # only the signature tells them apart
    cert = leaf(impostor, "DeviceA.company.com")
    assert registry.provision_by_certificate(der_bytes(cert)).status is NOT_FOUND
    assert cert_login(registry, cert).outcome is LoginOutcome.NOT_AUTHORIZED
    assert registry.count_devices() == 0


def test_device_name_taken_in_another_profile_fails(registry, ca):
    chain_profile(registry, ca)
    registry.create_device("DeviceA", credentials=AccessToken("elsewhere-token"))  # default profile
    cert = leaf(ca, "DeviceA.company.com")
    assert registry.provision_by_certificate(der_bytes(cert)).status is FAILURE
    assert cert_login(registry, cert).outcome is LoginOutcome.NOT_AUTHORIZED
    assert registry.get_credentials("DeviceA").credentials_id == "elsewhere-token"


def test_expired_leaf_is_refused_and_creates_nothing(registry, ca):
    chain_profile(registry, ca)
    cert = leaf(ca, "DeviceA.company.com", days=1, not_before=datetime.now(timezone.utc) - timedelta(days=10))
    assert cert_login(registry, cert).outcome is LoginOutcome.NOT_AUTHORIZED
    assert registry.count_devices() == 0


def test_one_ca_cannot_back_two_profiles(registry, ca):
    chain_profile(registry, ca)
    with pytest.raises(ValidationError, match="^Device profile with such certificate already exists!$"):
        chain_profile(registry, ca, name="chain-again")


def test_two_profiles_cannot_share_a_provision_key(registry, allow):
    with pytest.raises(ValidationError, match="provision device key already exists!"):
        registry.create_profile("check-same-key", ProvisionType.CHECK_PRE_PROVISIONED_DEVICES,
                                key=ALLOW_KEY, secret="another-secret")


# --- profiles edited in place (admin REST API) --------------------------------------------------

def test_a_profile_updated_in_place_keeps_its_id_and_provisions_with_its_new_secret(registry, allow):
    updated = registry.update_profile(allow.id, "renamed", ProvisionType.ALLOW_CREATE_NEW_DEVICES,
                                      secret="new-Secret-1", description="edited")
    assert (updated.id, updated.name, updated.description) == (allow.id, "renamed", "edited")
    assert (updated.provision_device_key, updated.provision_device_secret) == (ALLOW_KEY, "new-Secret-1")
    assert provision(registry, updated, deviceName="after-edit").status is SUCCESS
    assert provision(registry, allow, deviceName="old-secret").status is NOT_FOUND
    assert registry.get_device("after-edit").profile_name == "renamed"


def test_a_profile_switched_to_disabled_loses_key_and_secret(registry, allow):
    disabled = registry.update_profile(allow.id, allow.name, ProvisionType.DISABLED)
    assert (disabled.provision_device_key, disabled.provision_device_secret) == (None, None)
    assert provision(registry, allow, deviceName="refused").status is NOT_FOUND
    switched = registry.update_profile(allow.id, allow.name, ProvisionType.CHECK_PRE_PROVISIONED_DEVICES)
    assert len(switched.provision_device_key) == 20 and len(switched.provision_device_secret) == 20


def test_a_profile_update_that_clashes_changes_nothing(registry, allow, check):
    with pytest.raises(ValidationError, match="^Device profile with such provision device key already exists!$"):
        registry.update_profile(check.id, "check-renamed", ProvisionType.CHECK_PRE_PROVISIONED_DEVICES, key=ALLOW_KEY)
    with pytest.raises(ValidationError, match="^Device profile with such name already exists!$"):
        registry.update_profile(check.id, allow.name, ProvisionType.CHECK_PRE_PROVISIONED_DEVICES)
    assert registry.get_profile(check.id, by_id=True) == check


def test_profiles_are_listed_in_pages_filtered_by_name(registry, allow, check):
    registry.create_profile("100%_literal")
    names = [p.name for p in registry.list_profiles()]
    assert names == sorted(names) and len(names) == 4 == registry.count_profiles()
    assert [p.name for p in registry.list_profiles(offset=1, limit=2)] == names[1:3]
    assert [p.name for p in registry.list_profiles(name_contains="%_")] == ["100%_literal"]
    assert registry.count_profiles(name_contains="PROFILE") == 2  # case-insensitive, like ThingsBoard
    assert [p.name for p in registry.list_profiles(descending=True)] == names[::-1]
    newest_first = [p.created_time for p in registry.list_profiles(order_by="created_time", descending=True)]
    assert newest_first == sorted(newest_first, reverse=True)
    with pytest.raises(ValidationError):
        registry.list_profiles(order_by="provision_device_key")


def test_profile_lookups_by_id_never_match_a_name(registry, allow):
    registry.create_profile(allow.id)  # a profile named like another one's id
    assert registry.get_profile(allow.id, by_id=True) == allow
    with pytest.raises(NotFoundError, match=r"^Device profile with id \[.*\] is not found$"):
        registry.get_profile("00000000-0000-0000-0000-000000000000", by_id=True)
