"""The operator web UI (`/ui`) at the Flask level: the real sidecar app on a real data dir, driven
with Flask's test client. Logins and sessions, CSRF, server-side validation shown next to the
field with nothing half-saved, secrets hidden until revealed, shared attributes, bulk import.
The browser scenarios against a running broker and sidecar are in test_web_ui_browser.py."""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gatehouse.credentials import AccessToken, MqttBasic
from gatehouse.device_activity import ActivityTracker
from gatehouse.errors import NotFoundError
from gatehouse.login import LoginOutcome
from gatehouse.models import AttributeScope, CredentialsType, ProvisionType
from gatehouse.mqtt_topic_settings import MqttTopicSettings
from gatehouse.payloads import KvEntry, TelemetryRecord, ValueKind
from gatehouse.pki import DevelopmentPki, issue_device_certificate
from gatehouse.provisioning import ProvisionRequest
from sidecar.app import create_app
from sidecar.context import SidecarSettings

from .web_ui_client import ADMIN, PASSWORD, Ui, new_device, upload, wait_for_import

# Each test that uses the store runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.both_stores


def _field_errors(html: str, field: str) -> list[str]:
    """The errors shown next to a field (the macro in _forms.html renders them there)."""
    return re.findall(rf'<p class="error" id="{field}-error">([^<]*)</p>', html)


@pytest.fixture
def app(registry, deployment):
    registry.add_admin(ADMIN, PASSWORD)
    return create_app(SidecarSettings(data_dir=deployment))


@pytest.fixture
def ui(app) -> Ui:
    client = Ui(app)
    assert client.login().status_code == 302
    return client


# --- logins, sessions, CSRF ---------------------------------------------------------------------

def test_every_ui_page_needs_a_login(app):
    client = app.test_client()
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("ui.") or rule.endpoint in ("ui.login", "ui.static"):
            continue
        path = re.sub(r"<[^>]+>", "00000000-0000-4000-8000-000000000000", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            response = client.open(path, method=method)
            assert response.status_code == 302, (method, path)
            assert response.location.startswith("/ui/login"), (method, path)
            checked += 1
    assert checked >= 20


def test_login_refuses_a_wrong_password_next_to_the_field(app):
    client = Ui(app)
    response = client.login(password="not-the-password")
    assert response.status_code == 200
    assert _field_errors(response.get_data(as_text=True), "password") == ["Invalid username or password"]
    assert client.get("/ui/devices").status_code == 302


def test_an_address_that_failed_too_often_is_refused_even_the_right_password(registry, deployment):
    """The admin API's blocking (test_admin_api.py), shared: failures count across both."""
    registry.add_admin(ADMIN, PASSWORD)
    app = create_app(SidecarSettings(data_dir=deployment, max_failed_logins=2, block_seconds=60))
    attacker = Ui(app)
    attacker.client.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    assert app.test_client().post("/api/auth/login", json={"username": ADMIN, "password": "wrong"},
                                  environ_base={"REMOTE_ADDR": "192.0.2.7"}).status_code == 401
    assert attacker.login(password="wrong").status_code == 200
    response = attacker.login()
    assert response.status_code == 429
    [error] = _field_errors(response.get_data(as_text=True), "password")
    assert re.fullmatch(r"Too many failed logins from this address; try again later \(in \d+ s\)", error)
    assert attacker.get("/ui/devices").status_code == 302  # not logged in
    assert Ui(app).login().status_code == 302  # another address (the test client's default)


def test_the_session_cookie_is_httponly_samesite_lax_and_limited_to_the_ui(app):
    client = Ui(app)
    response = client.login()
    assert response.status_code == 302 and response.location == "/ui/devices"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/ui" in cookie
    assert PASSWORD not in cookie


def test_requests_outside_the_ui_neither_read_nor_refresh_its_session(app):
    client = Ui(app)
    client.login()
    # A browser sends the cookie to /ui only; this client is made to send it everywhere.
    client.client.set_cookie("gatehouse_ui", client.client.get_cookie("gatehouse_ui", path="/ui").value, path="/")
    assert "Set-Cookie" in client.get("/ui/devices").headers  # the UI refreshes it: an idle timeout
    for path in ("/metrics", "/api/v1/provision", "/uix"):
        assert "Set-Cookie" not in client.get(path).headers, path


def test_login_goes_back_to_the_page_asked_for_but_never_off_site(app):
    client = Ui(app)
    assert client.get("/ui/profiles").location == "/ui/login?next=/ui/profiles"
    client.get("/ui/login?next=/ui/profiles")
    assert client.post("/ui/login?next=/ui/profiles", {"username": ADMIN, "password": PASSWORD}).location \
        == "/ui/profiles"
    client = Ui(app)
    client.get("/ui/login")
    assert client.post("/ui/login?next=//evil.example/ui/x", {"username": ADMIN, "password": PASSWORD}).location \
        == "/ui/devices"


def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(ui, registry):
    before = registry.count_profiles()
    response = ui.post("/ui/profiles/new", {"name": "no-token", "strategy": "DISABLED"}, csrf=False)
    assert response.status_code == 400 and "CSRF" in response.get_data(as_text=True)
    response = ui.post("/ui/profiles/new", {"name": "no-token", "strategy": "DISABLED", "csrf_token": "forged"})
    assert response.status_code == 400
    assert registry.count_profiles() == before
    device = registry.create_device("keep-me")
    assert ui.post(f"/ui/devices/{device.id}/delete", csrf=False).status_code == 400
    assert registry.find_device_by_name("keep-me") is not None


def test_the_admin_api_takes_no_csrf_token(app):
    response = app.test_client().post("/api/auth/login", json={"username": ADMIN, "password": PASSWORD})
    assert response.status_code == 200 and "token" in response.get_json()


def test_a_session_ends_after_its_idle_lifetime(registry, deployment):
    registry.add_admin(ADMIN, PASSWORD)
    client = Ui(create_app(SidecarSettings(data_dir=deployment, ui_session_idle_seconds=1)))
    client.login()
    assert client.get("/ui/devices").status_code == 200
    time.sleep(2.2)  # the cookie's signature is older than the lifetime (whole seconds)
    response = client.get("/ui/devices")
    assert response.status_code == 302 and response.location.startswith("/ui/login")


def test_logging_out_ends_the_session(ui):
    ui.get("/ui/devices")
    assert ui.post("/ui/logout").location == "/ui/login"
    assert ui.get("/ui/devices").status_code == 302


def test_a_removed_administrator_is_logged_out(ui, registry):
    assert ui.get("/ui/devices").status_code == 200
    # The registry has no way to remove an administrator yet: as an operator would, in SQL.
    with registry.batch():
        registry.store._write("DELETE FROM admin_user WHERE username = ?", [ADMIN])
    assert ui.get("/ui/devices").status_code == 302


# --- device profiles ----------------------------------------------------------------------------

def test_profile_refusals_are_shown_next_to_their_field_and_nothing_is_saved(ui, registry, data_dir):
    registry.create_profile("taken")
    before = registry.count_profiles()
    ui.get("/ui/profiles/new")
    cases = [
        ({"name": "taken", "strategy": "DISABLED"}, "name", "Device profile with such name already exists!"),
        ({"name": "  ", "strategy": "DISABLED"}, "name", "Device profile name should be specified!"),
        ({"name": "chain", "strategy": "X509_CERTIFICATE_CHAIN"}, "ca_certificate", "Upload the CA certificate"),
        ({"name": "chain", "strategy": "X509_CERTIFICATE_CHAIN", "ca_certificate": upload("not a certificate"),
          "cn_regex": "(.*)"}, "ca_certificate", "Invalid CA certificate"),
        ({"name": "chain", "strategy": "X509_CERTIFICATE_CHAIN", "cn_regex": "no-group",
          "ca_certificate": upload((data_dir / "pki" / "ca.pem").read_text())}, "cn_regex", "capture group"),
        ({"name": "keys", "strategy": "ALLOW_CREATE_NEW_DEVICES", "key": " padded "}, "key", "whitespace"),
    ]
    for data, field, message in cases:
        response = ui.post("/ui/profiles/new", data)
        assert response.status_code == 400, data
        errors = _field_errors(response.get_data(as_text=True), field)
        assert len(errors) == 1 and message in errors[0].replace("&#39;", "'"), (data, errors)
    assert registry.count_profiles() == before


def test_a_strategy_outside_the_offered_ones_is_refused(ui, registry):
    before = registry.count_profiles()
    ui.get("/ui/profiles/new")
    response = ui.post("/ui/profiles/new", {"name": "odd", "strategy": "SOMETHING_ELSE"})
    assert response.status_code == 400 and _field_errors(response.get_data(as_text=True), "strategy")
    assert registry.count_profiles() == before


def test_a_profile_secret_stays_hidden_until_revealed_and_can_be_regenerated(ui, registry):
    profile = registry.create_profile("fleet", ProvisionType.CHECK_PRE_PROVISIONED_DEVICES, key="FLEET_KEY",
                                      secret="FLEET_SECRET_42")
    page = ui.get(f"/ui/profiles/{profile.id}").get_data(as_text=True)
    assert "FLEET_KEY" in page and "FLEET_SECRET_42" not in page
    assert "FLEET_SECRET_42" in ui.post(f"/ui/profiles/{profile.id}/reveal").get_data(as_text=True)
    assert ui.post(f"/ui/profiles/{profile.id}/regenerate").status_code == 302
    regenerated = registry.get_profile(profile.id, by_id=True)
    assert regenerated.provision_device_key != "FLEET_KEY"
    assert regenerated.provision_device_secret != "FLEET_SECRET_42"
    assert regenerated.provision_type is ProvisionType.CHECK_PRE_PROVISIONED_DEVICES


def test_editing_a_chain_profile_keeps_its_ca_unless_a_new_one_is_uploaded(ui, registry, data_dir):
    ca = (data_dir / "pki" / "ca.pem").read_text()
    profile = registry.create_profile("factory", ProvisionType.X509_CERTIFICATE_CHAIN, ca_certificate_pem=ca)
    ui.get(f"/ui/profiles/{profile.id}")
    response = ui.post(f"/ui/profiles/{profile.id}", {"name": "factory-2", "strategy": "X509_CERTIFICATE_CHAIN",
                                                       "cn_regex": r"(.*)\.factory", "allow_create": "y"})
    assert response.status_code == 302
    edited = registry.get_profile(profile.id, by_id=True)
    assert (edited.name, edited.certificate_regex, edited.provision_device_key) == \
        ("factory-2", r"(.*)\.factory", profile.provision_device_key)


def test_a_profile_takes_mqtt_topics_shows_them_again_and_keeps_them_on_regenerate(ui, registry):
    ui.get("/ui/profiles/new")
    mqtt = {"name": "custom-topics", "strategy": "ALLOW_CREATE_NEW_DEVICES", "transport": "MQTT",
            "mqtt_telemetry_topic": "sensors/+/data", "mqtt_attributes_topic": "sensors/+/state",
            "mqtt_attributes_subscribe_topic": "v1/devices/me/attributes", "mqtt_send_ack": "y"}
    refused = ui.post("/ui/profiles/new", {**mqtt, "mqtt_telemetry_topic": "sensors/#/data"})
    assert refused.status_code == 400
    assert "whole last level" in _field_errors(refused.get_data(as_text=True), "mqtt_telemetry_topic")[0]
    assert registry.find_device_by_name("custom-topics") is None
    assert ui.post("/ui/profiles/new", mqtt).status_code == 302
    profile = registry.get_profile("custom-topics")
    assert profile.mqtt_topics == MqttTopicSettings("sensors/+/data", "sensors/+/state", send_ack_on_validation_exception=True)
    page = ui.get(f"/ui/profiles/{profile.id}").get_data(as_text=True)
    assert 'value="sensors/+/state"' in page and '<option selected value="MQTT">' in page
    assert ui.post(f"/ui/profiles/{profile.id}/regenerate").status_code == 302
    assert registry.get_profile(profile.id, by_id=True).mqtt_topics == profile.mqtt_topics


def test_the_cn_preview_applies_the_provisioning_rule(ui):
    answer = ui.get("/ui/profiles/cn-preview", query_string={"cn": "meter-7.factory.example",
                                                               "regex": r"(.*)\.factory\.example"}).get_json()
    assert answer == {"name": "meter-7"}
    assert ui.get("/ui/profiles/cn-preview", query_string={"cn": "x", "regex": "nogroup"}).get_json() == {"name": None}


def test_a_profile_in_use_is_not_deleted(ui, registry):
    profile = registry.create_profile("busy")
    registry.create_device("in-busy", profile="busy")
    ui.get(f"/ui/profiles/{profile.id}")
    response = ui.post(f"/ui/profiles/{profile.id}/delete", follow_redirects=True)
    assert "referenced by the devices" in response.get_data(as_text=True)
    assert registry.get_profile(profile.id, by_id=True).name == "busy"


def test_an_unused_profile_is_deleted(ui, registry):
    profile = registry.create_profile("retired", ProvisionType.ALLOW_CREATE_NEW_DEVICES, key="RETIRED_KEY",
                                      secret="RETIRED_SECRET")
    before = registry.count_profiles()
    ui.get(f"/ui/profiles/{profile.id}")
    response = ui.post(f"/ui/profiles/{profile.id}/delete")
    assert response.status_code == 302 and response.location == "/ui/profiles"
    assert registry.count_profiles() == before - 1
    with pytest.raises(NotFoundError):
        registry.get_profile(profile.id, by_id=True)
    assert registry.provision(ProvisionRequest("RETIRED_KEY", "RETIRED_SECRET", "late")).status.value == "NOT_FOUND"
    page = ui.get("/ui/profiles").get_data(as_text=True)
    assert "Profile retired deleted." in page and f"/ui/profiles/{profile.id}" not in page


# --- devices ------------------------------------------------------------------------------------

def test_device_refusals_are_shown_next_to_their_field_and_nothing_is_saved(ui, registry):
    registry.create_device("existing", credentials=AccessToken("TAKEN_TOKEN"))
    profile_id = registry.default_profile().id
    before = registry.count_devices()
    cases = [
        ({"name": "existing"}, "name", "Device with such name already exists!"),
        ({"name": ""}, "name", "Device name should be specified!"),
        ({"name": "twin", "token": "TAKEN_TOKEN"}, "credentials_type", "already assigned to another device"),
        ({"name": "basic", "credentials_type": "MQTT_BASIC", "client_id": "c1", "password": "p"}, "client_id",
         "Password cannot be specified along with client id"),
        ({"name": "basic", "credentials_type": "MQTT_BASIC"}, "client_id",
         "Both mqtt client id and user name are empty"),
        ({"name": "cert", "credentials_type": "X509_CERTIFICATE", "certificate": upload("garbage")}, "certificate",
         "Invalid certificate"),
        ({"name": "cert", "credentials_type": "X509_CERTIFICATE"}, "certificate", "certificate file"),
    ]
    for data, field, message in cases:
        response = new_device(ui, profile=profile_id, **data)
        assert response.status_code == 400, data
        errors = _field_errors(response.get_data(as_text=True), field)
        assert len(errors) == 1 and message in errors[0], (data, errors)
    assert registry.count_devices() == before


def test_devices_are_created_with_each_credentials_type(ui, registry, data_dir, tmp_path):
    profile_id = registry.create_profile("meters").id
    assert new_device(ui, name="tok", profile=profile_id, token="MY_TOKEN_1").status_code == 302
    assert new_device(ui, name="gen", profile=profile_id).status_code == 302
    assert new_device(ui, name="mqtt", profile=profile_id, credentials_type="MQTT_BASIC", client_id="c-1",
                       user_name="u-1", password="p-1").status_code == 302
    cert, _ = issue_device_certificate(DevelopmentPki.in_directory(data_dir / "pki"), "cam-1", tmp_path)
    assert new_device(ui, name="cam", profile=profile_id, credentials_type="X509_CERTIFICATE",
                       certificate=upload(cert.read_text())).status_code == 302
    assert registry.mqtt_login("any", "MY_TOKEN_1").device.name == "tok"
    assert registry.mqtt_login("c-1", "u-1", "p-1").device.name == "mqtt"
    assert registry.get_credentials("gen").credentials_type is CredentialsType.ACCESS_TOKEN
    assert registry.get_credentials("cam").credentials_type is CredentialsType.X509_CERTIFICATE
    assert {d.profile_name for d in registry.list_devices()} == {"meters"}


def test_device_secrets_stay_out_of_pages_until_revealed(ui, registry):
    token_device = registry.create_device("tok", credentials=AccessToken("SECRET_TOKEN_123"))
    basic_device = registry.create_device("basic", credentials=MqttBasic("cid-9", "user-9", "SECRET_PASSWORD_9"))
    for device, secret in ((token_device, "SECRET_TOKEN_123"), (basic_device, "SECRET_PASSWORD_9")):
        assert secret not in ui.get(f"/ui/devices/{device.id}").get_data(as_text=True)
        assert secret not in ui.get("/ui/devices").get_data(as_text=True)
        assert secret in ui.post(f"/ui/devices/{device.id}/credentials/reveal").get_data(as_text=True)


def test_rotating_credentials_replaces_them_and_a_refusal_keeps_the_old_ones(ui, registry):
    device = registry.create_device("rot", credentials=AccessToken("OLD_TOKEN_1"))
    registry.create_device("other", credentials=AccessToken("OTHER_TOKEN"))
    ui.get(f"/ui/devices/{device.id}")
    response = ui.post(f"/ui/devices/{device.id}/credentials", {"credentials_type": "ACCESS_TOKEN",
                                                                 "token": "OTHER_TOKEN"})
    assert response.status_code == 400 and "OTHER_TOKEN" not in response.get_data(as_text=True)
    assert _field_errors(response.get_data(as_text=True), "credentials_type")
    assert registry.get_credentials(device.id, by_id=True).credentials_id == "OLD_TOKEN_1"
    assert ui.post(f"/ui/devices/{device.id}/credentials", {"credentials_type": "ACCESS_TOKEN"}).status_code == 302
    rotated = registry.get_credentials(device.id, by_id=True)
    assert rotated.credentials_type is CredentialsType.ACCESS_TOKEN and rotated.credentials_id != "OLD_TOKEN_1"


def test_the_device_list_searches_pages_and_shows_connection_state_when_known(ui, registry):
    for n in range(25):
        registry.create_device(f"pump-{n:02}")
    registry.create_device("valve-1")
    page = ui.get("/ui/devices", query_string={"q": "pump"}).get_data(as_text=True)
    assert "25 devices" in page and "pump-00" in page and "pump-19" in page and "pump-20" not in page
    assert "valve-1" not in page
    page = ui.get("/ui/devices", query_string={"q": "pump", "page": 1}).get_data(as_text=True)
    assert "pump-20" in page and "pump-24" in page and "pump-00" not in page
    row = re.search(r"valve-1</a></td>(.*?)</tr>", ui.get("/ui/devices?q=valve").get_data(as_text=True), re.DOTALL).group(1)
    assert re.findall(r'data-label="(?:Connected now|Last activity)">([^<]*)<', row) == ["—", "—"]
    # What the transports will write, in ThingsBoard's names, is shown once it is there: activity
    # alone (an HTTP device's requests) is no connection; a session (MQTT, CoAP observe) is.
    valve = registry.find_device_by_name("valve-1")
    registry.save_attributes(valve.id, AttributeScope.SERVER, [KvEntry("active", ValueKind.BOOLEAN, True),
                                                               KvEntry("lastActivityTime", ValueKind.LONG, 0)])
    row = re.search(r"valve-1</a></td>(.*?)</tr>", ui.get("/ui/devices?q=valve").get_data(as_text=True), re.DOTALL).group(1)
    assert re.findall(r'data-label="(?:Connected now|Last activity)">([^<]*)<', row) == \
        ["no", "1970-01-01 00:00:00 UTC"]
    registry.save_attributes(valve.id, AttributeScope.SERVER, [KvEntry("lastConnectTime", ValueKind.LONG, 0)])
    row = re.search(r"valve-1</a></td>(.*?)</tr>", ui.get("/ui/devices?q=valve").get_data(as_text=True), re.DOTALL).group(1)
    assert re.findall(r'data-label="(?:Connected now|Last activity)">([^<]*)<', row) == \
        ["yes", "1970-01-01 00:00:00 UTC"]


def device_facts(ui, device) -> tuple[str, str]:
    page = ui.get(f"/ui/devices/{device.id}").get_data(as_text=True)
    return (re.search(r'<dd id="connected">([^<]*)</dd>', page).group(1),
            re.search(r'<dd id="last-activity">([^<]*)</dd>', page).group(1))


def test_a_device_page_says_connected_for_a_session_and_shows_http_requests_as_activity(ui, registry):
    session, requests_only, unseen = (registry.create_device(name) for name in ("session", "requests", "unseen"))
    tracker = ActivityTracker()
    tracker.connected(session.id, 1_795_000_000_000)  # what the broker reports of an MQTT session
    tracker.active(requests_only.id, 1_795_000_000_000)  # what the sidecar reports of an HTTP request
    registry.record_activity(tracker.take_changes(1_795_000_000_000))
    assert device_facts(ui, session) == ("yes", "2026-11-18 11:06:40 UTC")
    assert device_facts(ui, requests_only) == ("no", "2026-11-18 11:06:40 UTC")
    assert device_facts(ui, unseen) == ("—", "—")
    tracker.disconnected(session.id, 1_795_000_060_000)
    registry.record_activity(tracker.take_changes(1_795_000_060_000))
    assert device_facts(ui, session) == ("no", "2026-11-18 11:07:40 UTC")


def test_time_attributes_are_shown_in_utc_with_their_raw_value_kept(ui, registry):
    device = registry.create_device("timed")
    registry.save_attributes(device.id, AttributeScope.SERVER, [
        KvEntry("lastActivityTime", ValueKind.LONG, 1_795_000_000_000),
        KvEntry("inactivityAlarmTime", ValueKind.LONG, 1_700_000_000_000),
        KvEntry("lastCalibrationTs", ValueKind.LONG, 0), KvEntry("interval", ValueKind.LONG, 1_795_000_000_000),
        KvEntry("startTime", ValueKind.STRING, "tomorrow")])
    page = ui.get(f"/ui/devices/{device.id}").get_data(as_text=True)
    server = re.search(r'id="server-attributes"(.*?)</table>', page, re.DOTALL).group(1)
    values = dict(re.findall(r'<td data-label="Key">([^<]*)</td>\s*<td data-label="Value">(.*?)</td>', server))
    assert values == {
        "inactivityAlarmTime": '<time title="1700000000000">2023-11-14 22:13:20 UTC</time>',
        "interval": "<code>1795000000000</code>",  # no time by its name: shown as it is
        "lastActivityTime": '<time title="1795000000000">2026-11-18 11:06:40 UTC</time>',
        "lastCalibrationTs": '<time title="0">1970-01-01 00:00:00 UTC</time>',
        "startTime": '<code>"tomorrow"</code>'}  # a name of a time, but not ms since the epoch


def test_the_sidecars_root_leads_to_the_ui(app):
    response = app.test_client().get("/")
    assert response.status_code == 302 and response.location == "/ui/"
    assert app.test_client().get(response.location).location.startswith("/ui/login")


def test_deleting_a_device_removes_it_its_credentials_and_its_data(ui, registry):
    device = registry.create_device("doomed", credentials=AccessToken("DOOMED_TOKEN"))
    registry.save_attributes(device.id, AttributeScope.SHARED, [KvEntry("model", ValueKind.STRING, "T-1")])
    registry.create_device("bystander")
    ui.get(f"/ui/devices/{device.id}")
    response = ui.post(f"/ui/devices/{device.id}/delete")
    assert response.status_code == 302 and response.location == "/ui/devices"
    assert registry.find_device_by_name("doomed") is None
    assert registry.mqtt_login("any", "DOOMED_TOKEN").outcome is not LoginOutcome.ACCEPTED
    assert registry.get_attributes(device.id, AttributeScope.SHARED) == {}
    assert registry.find_device_by_name("bystander") is not None
    assert "Device doomed deleted." in ui.get("/ui/devices").get_data(as_text=True)
    assert ui.get(f"/ui/devices/{device.id}").status_code == 404


def test_a_shared_attribute_is_typed_as_the_admin_api_types_it_and_a_bad_one_is_not_saved(ui, registry):
    device = registry.create_device("attrs")
    ui.get(f"/ui/devices/{device.id}")
    path = f"/ui/devices/{device.id}/attributes/shared"
    for key, value in (("model", "T-1000"), ("limit", "42"), ("on", "true"), ("conf", '{"a": 1}')):
        assert ui.post(path, {"key": key, "value": value}).status_code == 302
    assert registry.get_attributes(device.id, AttributeScope.SHARED) == \
        {"model": "T-1000", "limit": 42, "on": True, "conf": {"a": 1}}
    response = ui.post(path, {"key": "", "value": "1"})
    assert response.status_code == 400 and _field_errors(response.get_data(as_text=True), "key")
    response = ui.post(path, {"key": "big", "value": "x" * 70_000})
    assert response.status_code == 400 and _field_errors(response.get_data(as_text=True), "value")
    assert ui.post(f"{path}/delete", {"key": "model"}).status_code == 302
    assert set(registry.get_attributes(device.id, AttributeScope.SHARED)) == {"limit", "on", "conf"}


def test_an_unknown_device_is_a_404_page(ui):
    response = ui.get("/ui/devices/00000000-0000-4000-8000-000000000000")
    assert response.status_code == 404 and response.mimetype == "text/html"


# --- bulk import --------------------------------------------------------------------------------

def test_a_csv_import_keeps_the_good_lines_and_reports_the_bad_one(ui, registry):
    csv_text = ("NAME,TYPE,ACCESS_TOKEN,SHARED_ATTRIBUTE:model\n"
                "imp-1,imported,IMP_TOKEN_1,T-1\n"
                "imp-2,imported,IMP_TOKEN_1,T-2\n"  # the same token twice
                "imp-3,imported,,T-3\n")
    ui.get("/ui/import")
    response = ui.post("/ui/import", {"file": upload(csv_text, "devices.csv"), "delimiter": ",", "update": "y"})
    assert response.status_code == 302
    status = wait_for_import(ui, response.location)
    assert (status["total"], status["done"], status["created"], status["errors"]) == (3, 3, 2, 1)
    assert status["errorsList"] == ["Line 3: Device credentials are already assigned to another device!"]
    assert registry.find_device_by_name("imp-2") is None
    assert registry.get_attributes(registry.find_device_by_name("imp-3").id, AttributeScope.SHARED) == {"model": "T-3"}
    page = ui.get(response.location).get_data(as_text=True)
    assert "Line 3: Device credentials are already assigned to another device!" in page


def test_a_csv_import_updating_a_shared_attribute_reaches_a_device_polling_for_updates(ui, app, registry):
    registry.create_device("polling", credentials=AccessToken("POLLING_TOKEN"))
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(app.test_client().get, "/api/v1/POLLING_TOKEN/attributes/updates?timeout=10000")
        time.sleep(0.5)  # the poll is open
        ui.get("/ui/import")
        response = ui.post("/ui/import", {"file": upload("NAME,SHARED_ATTRIBUTE:firmware\npolling,v2\n", "fw.csv"),
                                          "delimiter": ",", "update": "y"})
        assert wait_for_import(ui, response.location)["updated"] == 1
        answer = poll.result(timeout=15)
    assert (answer.status_code, answer.get_json()) == (200, {"firmware": "v2"})


def test_a_csv_without_a_name_column_is_refused_next_to_the_file(ui, registry):
    ui.get("/ui/import")
    response = ui.post("/ui/import", {"file": upload("TYPE,LABEL\nx,y\n", "bad.csv"), "delimiter": ","})
    assert response.status_code == 400
    assert "NAME column" in _field_errors(response.get_data(as_text=True), "file")[0]


def test_an_import_is_seen_by_its_administrator_only(ui, app, registry):
    ui.get("/ui/import")
    location = ui.post("/ui/import", {"file": upload("NAME\nsolo-1\n", "one.csv"), "delimiter": ","}).location
    wait_for_import(ui, location)
    registry.add_admin("second@gatehouse.test", "second-Password-1")
    other = Ui(app)
    other.login("second@gatehouse.test", "second-Password-1")
    assert other.get(location + "/status").status_code == 404


def test_the_login_form_needs_its_csrf_token_and_survives_missing_fields(app):
    client = Ui(app)
    client.get("/ui/login")
    assert client.post("/ui/login", {"username": ADMIN, "password": PASSWORD}, csrf=False).status_code == 400
    response = client.post("/ui/login", {})
    assert response.status_code == 200 and _field_errors(response.get_data(as_text=True), "password")


def test_pages_refuse_framing_and_caching_and_run_only_the_uis_own_scripts(ui, registry):
    device = registry.create_device("headers", credentials=AccessToken("HEADER_TOKEN"))
    ui.get(f"/ui/devices/{device.id}")
    response = ui.post(f"/ui/devices/{device.id}/credentials/reveal")
    assert "HEADER_TOKEN" in response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert "<script>" not in response.get_data(as_text=True)  # no inline script: the policy would block it


def test_a_device_page_shows_its_telemetry_attributes_and_provisioning_events(ui, registry):
    registry.create_profile("auto", ProvisionType.ALLOW_CREATE_NEW_DEVICES, key="AUTO_KEY", secret="AUTO_SECRET")
    result = registry.provision(ProvisionRequest("AUTO_KEY", "AUTO_SECRET", "self-made"), transport="HTTP")
    registry.save_telemetry(result.device_id, [TelemetryRecord(1_700_000_000_000,
                                                               (KvEntry("temperature", ValueKind.DOUBLE, 21.5),))])
    registry.save_attributes(result.device_id, AttributeScope.CLIENT, [KvEntry("fw", ValueKind.STRING, "1.2.3")])
    page = ui.get(f"/ui/devices/{result.device_id}").get_data(as_text=True)
    telemetry = re.search(r'id="telemetry"(.*?)</section>', page, re.DOTALL).group(1)
    assert "temperature" in telemetry and "21.5" in telemetry and "2023-11-14 22:13:20 UTC" in telemetry
    assert "fw" in re.search(r'id="client-attributes"(.*?)</table>', page, re.DOTALL).group(1)
    events = re.search(r'id="provisioning-events"(.*?)</section>', page, re.DOTALL).group(1)
    assert "SUCCESS" in events and "ALLOW_CREATE_NEW_DEVICES" in events and "HTTP" in events
    assert re.search(r"<dt>Provisioned</dt><dd>yes</dd>", page)
    assert "AUTO_SECRET" not in page


def test_a_refused_form_does_not_send_typed_secrets_back(ui, registry):
    registry.create_device("taken-name")
    response = new_device(ui, name="taken-name", profile=registry.default_profile().id,
                           credentials_type="MQTT_BASIC", client_id="cid", user_name="user", password="TYPED_PASSWORD")
    assert response.status_code == 400 and "TYPED_PASSWORD" not in response.get_data(as_text=True)
    ui.get("/ui/profiles/new")
    response = ui.post("/ui/profiles/new", {"name": "", "strategy": "ALLOW_CREATE_NEW_DEVICES",
                                            "secret": "TYPED_SECRET"})
    assert response.status_code == 400 and "TYPED_SECRET" not in response.get_data(as_text=True)
