"""The operator web UI in a real browser: Debian's Chromium, driven by Playwright, against a real
`gatehouse broker` and `gatehouse sidecar` on free ports, with paho MQTT devices on the other
side. Screenshots of the main pages land in test-artifacts/ui/.

Chromium comes from Debian (`make test` installs it): Playwright's own browser download cannot
work here, so `playwright install` is never run, and a missing /usr/bin/chromium fails the tests.
All tests share one broker, one sidecar and one browser; each uses its own names."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from gatehouse.credentials import AccessToken
from gatehouse.models import AttributeScope, CredentialsType
from gatehouse.pki import DevelopmentPki, issue_device_certificate
from gatehouse.registry import Registry

from .conftest import broker_and_sidecar
from .devices import unique
from .mqtt_client import connect, next_on, wait_until

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium hangs on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "ui"
ADMIN, PASSWORD = "browser@gatehouse.test", "browser-Password-3"
ATTRIBUTES_TOPIC = "v1/devices/me/attributes"
NARROW = {"width": 375, "height": 800}


@pytest.fixture(scope="module")
def gh(tmp_path_factory):
    with broker_and_sidecar(tmp_path_factory.mktemp("web-ui")) as (broker, sidecar):
        with Registry.open(broker.data_dir) as registry:
            registry.add_admin(ADMIN, PASSWORD)
        yield broker, sidecar


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`make debian-test-packages`)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, gh) -> Page:
    _, sidecar = gh
    context = browser.new_context(base_url=sidecar.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # "Delete …?", "Regenerate?"
    yield page
    context.close()


def log_in(page: Page, screenshot: str | None = None) -> None:
    page.goto("/ui/devices")
    expect(page).to_have_url("/ui/login?next=/ui/devices")
    page.fill("#username", ADMIN)
    page.fill("#password", PASSWORD)
    if screenshot:
        page.screenshot(path=ARTIFACTS / screenshot, full_page=True)
    page.click("button:has-text('Log in')")
    expect(page.locator("h1")).to_have_text("Devices")


def registry_of(gh) -> Registry:
    broker, _ = gh
    return Registry.open(broker.data_dir)


def test_an_administrator_logs_in_and_a_wrong_password_is_refused(page: Page):
    page.goto("/ui/login")
    page.fill("#username", ADMIN)
    page.fill("#password", "wrong-password")
    page.click("button:has-text('Log in')")
    expect(page.locator("#password-error")).to_have_text("Invalid username or password")
    log_in(page, screenshot="login.png")
    page.click("nav >> text=Log out")
    expect(page.locator("h1")).to_have_text("Log in")


def test_a_key_and_secret_profile_is_created_revealed_copied_and_regenerated(page: Page, gh):
    log_in(page)
    name = unique("fleet")
    page.click("nav >> text=Profiles")
    page.click("text=New profile")
    expect(page.locator("#field-key")).to_be_hidden()  # DISABLED: no key or secret fields
    page.fill("#name", name)
    page.select_option("#strategy", "CHECK_PRE_PROVISIONED_DEVICES")
    expect(page.locator("#field-key")).to_be_visible()
    page.fill("#secret", "FLEET_SECRET_1")
    page.click("button:has-text('Create profile')")
    expect(page.locator(".flash")).to_contain_text(f"Profile {name} created.")
    key = page.locator("#provision-key").inner_text()
    assert len(key) == 20  # generated
    expect(page.locator("body")).not_to_contain_text("FLEET_SECRET_1")
    page.click("#provisioning-keys button:has-text('Reveal')")
    expect(page.locator("#provision-secret")).to_have_text("FLEET_SECRET_1")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click("button[data-copy='#provision-secret']")
    expect(page.locator("button[data-copy='#provision-secret']")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "FLEET_SECRET_1"
    page.screenshot(path=ARTIFACTS / "profile-form.png", full_page=True)
    page.click("button:has-text('Regenerate key and secret')")
    expect(page.locator(".flash")).to_contain_text("New provision key and secret generated.")
    assert page.locator("#provision-key").inner_text() != key
    with registry_of(gh) as registry:
        profile = registry.get_profile(name)
    assert profile.provision_device_key == page.locator("#provision-key").inner_text()
    assert profile.provision_device_secret != "FLEET_SECRET_1"
    page.click("nav >> text=Profiles")
    expect(page.locator("#profiles")).to_contain_text(name)
    page.screenshot(path=ARTIFACTS / "profiles.png", full_page=True)


def test_an_x509_chain_profile_takes_a_ca_upload_and_previews_the_device_name(page: Page, gh):
    broker, _ = gh
    log_in(page)
    name = unique("factory")
    page.goto("/ui/profiles/new")
    page.fill("#name", name)
    page.select_option("#strategy", "X509_CERTIFICATE_CHAIN")
    expect(page.locator("#field-ca_certificate")).to_be_visible()
    page.fill("#cn_regex", r"(.*)\.factory\.example")
    page.fill("#sample_cn", "meter-9.factory.example")
    expect(page.locator("#cn-preview-result")).to_have_text("meter-9")
    page.screenshot(path=ARTIFACTS / "profile-x509-chain-form.png", full_page=True)
    page.fill("#sample_cn", "meter-9.elsewhere")
    expect(page.locator("#cn-preview-result")).to_contain_text("no match")
    page.click("button:has-text('Create profile')")  # no CA yet: refused next to the field
    expect(page.locator("#ca_certificate-error")).to_contain_text("Upload the CA certificate")
    page.set_input_files("#ca_certificate", str(broker.ca_cert))
    page.click("button:has-text('Create profile')")
    expect(page.locator(".flash")).to_contain_text(f"Profile {name} created.")
    with registry_of(gh) as registry:
        profile = registry.get_profile(name)
    assert profile.certificate_regex == r"(.*)\.factory\.example" and profile.provision_device_secret


def test_devices_are_created_with_each_credentials_type_and_log_in(page: Page, gh, tmp_path):
    broker, _ = gh
    log_in(page)
    prefix = unique("kind")
    token = unique("TOKEN")

    def create(name: str, kind: str, fill, screenshot: str | None = None) -> None:
        page.goto("/ui/devices/new")
        page.fill("#name", name)
        page.check(f"input[name=credentials_type][value={kind}]")
        fill()
        if screenshot:
            page.screenshot(path=ARTIFACTS / screenshot, full_page=True)
        page.click("button:has-text('Create device')")
        expect(page.locator("h1")).to_have_text(name)

    create(f"{prefix}-token", "ACCESS_TOKEN", lambda: page.fill("#token", token))
    create(f"{prefix}-generated", "ACCESS_TOKEN", lambda: None)
    create(f"{prefix}-basic", "MQTT_BASIC", lambda: (page.fill("#client_id", f"{prefix}-cid"),
                                                     page.fill("#user_name", f"{prefix}-user"),
                                                     page.fill("#password", "basic-pw")), "device-form.png")
    cert, key = issue_device_certificate(DevelopmentPki.in_directory(broker.data_dir / "pki"), f"{prefix}-cam",
                                         tmp_path)
    create(f"{prefix}-cert", "X509_CERTIFICATE", lambda: page.set_input_files("#certificate", str(cert)))

    page.goto(f"/ui/devices?q={prefix}")
    rows = page.locator("#devices tbody tr")
    expect(rows).to_have_count(4)
    types = dict(zip(rows.locator("td[data-label=Name]").all_inner_texts(),
                     rows.locator("td[data-label=Credentials]").all_inner_texts()))
    assert types == {f"{prefix}-basic": "MQTT basic", f"{prefix}-cert": "X.509 certificate",
                     f"{prefix}-generated": "Access token", f"{prefix}-token": "Access token"}
    expect(rows.first.locator("td[data-label='Connected now']")).to_have_text("—")
    page.screenshot(path=ARTIFACTS / "devices.png", full_page=True)

    assert connect(broker.mqtt_port, unique("c"), token).return_code == 0
    assert connect(broker.mqtt_port, f"{prefix}-cid", f"{prefix}-user", "basic-pw").return_code == 0
    assert connect(broker.mqtts_port, unique("c"), ca_cert=broker.ca_cert, cert=cert, key=key).return_code == 0

    # The broker stores their activity about a second later: connected now, with a time.
    def connected() -> dict[str, str]:
        page.goto(f"/ui/devices?q={prefix}")
        return dict(zip(rows.locator("td[data-label=Name]").all_inner_texts(),
                        rows.locator("td[data-label='Connected now']").all_inner_texts()))

    expected = {f"{prefix}-basic": "yes", f"{prefix}-cert": "yes", f"{prefix}-generated": "—", f"{prefix}-token": "yes"}
    assert wait_until(lambda: connected() == expected)
    expect(rows.first.locator("td[data-label='Last activity']")).to_contain_text(" UTC")


def test_a_token_is_revealed_and_rotated_and_the_old_one_stops_working(page: Page, gh):
    broker, _ = gh
    old_token = unique("OLD")
    with registry_of(gh) as registry:
        device = registry.create_device(unique("rotate"), credentials=AccessToken(old_token))
    log_in(page)
    page.goto(f"/ui/devices/{device.id}")
    expect(page.locator("#credentials")).not_to_contain_text(old_token)
    assert old_token not in page.content()
    page.click("#credentials button:has-text('Reveal')")
    expect(page.locator("#access-token")).to_have_text(old_token)
    page.screenshot(path=ARTIFACTS / "device.png", full_page=True)

    page.click("summary:has-text('Replace credentials')")
    page.click("#rotate-form button:has-text('Replace credentials')")
    expect(page.locator(".flash")).to_contain_text("Credentials replaced")
    page.click("#credentials button:has-text('Reveal')")
    new_token = page.locator("#access-token").inner_text()
    assert new_token and new_token != old_token
    assert connect(broker.mqtt_port, unique("c"), old_token).return_code == 5
    assert connect(broker.mqtt_port, unique("c"), new_token).return_code == 0


def test_a_shared_attribute_edited_in_the_browser_reaches_an_mqtt_device(page: Page, gh):
    broker, _ = gh
    token = unique("TOKEN")
    with registry_of(gh) as registry:
        device = registry.create_device(unique("attrs"), credentials=AccessToken(token))
    mqtt_device = connect(broker.mqtt_port, unique("c"), token)
    assert mqtt_device.return_code == 0 and mqtt_device.subscribe(ATTRIBUTES_TOPIC) == [1]
    log_in(page)
    page.goto(f"/ui/devices/{device.id}")
    page.fill("#shared-attribute-form #key", "targetTemperature")
    page.fill("#shared-attribute-form #value", "21.5")
    page.click("button:has-text('Save shared attribute')")
    expect(page.locator(".flash")).to_contain_text("Shared attribute targetTemperature saved")
    assert json.loads(next_on(mqtt_device, ATTRIBUTES_TOPIC).payload) == {"targetTemperature": 21.5}
    expect(page.locator("#shared-attributes")).to_contain_text("targetTemperature")

    page.fill("#shared-attribute-form #key", "bad")
    page.fill("#shared-attribute-form #value", "x" * 70_000)
    page.click("button:has-text('Save shared attribute')")
    expect(page.locator("#value-error")).to_be_visible()
    with registry_of(gh) as registry:
        assert registry.get_attributes(device.id, AttributeScope.SHARED) == {"targetTemperature": 21.5}


def test_a_csv_import_shows_progress_and_the_refused_line(page: Page, gh):
    prefix = unique("csv")
    csv_text = (f"NAME,TYPE,ACCESS_TOKEN,SHARED_ATTRIBUTE:model\n"
                f"{prefix}-1,{prefix},{prefix}-T1,M-1\n"
                f"{prefix}-2,{prefix},{prefix}-T1,M-2\n"
                f"{prefix}-3,{prefix},,M-3\n")
    log_in(page)
    page.click("nav >> text=Import")
    page.set_input_files("#file", {"name": "devices.csv", "mimeType": "text/csv", "buffer": csv_text.encode()})
    page.screenshot(path=ARTIFACTS / "import-upload.png", full_page=True)
    page.click("button:has-text('Import')")
    expect(page.locator("#import-summary")).to_contain_text("2 created, 0 updated, 1 refused")
    expect(page.locator("#import-progress")).to_have_attribute("value", "3")
    expect(page.locator("#import-progress")).to_have_attribute("max", "3")
    expect(page.locator("#import-errors li")).to_have_text(
        ["Line 3: Device credentials are already assigned to another device!"])
    page.screenshot(path=ARTIFACTS / "import-result.png", full_page=True)
    with registry_of(gh) as registry:
        assert registry.find_device_by_name(f"{prefix}-2") is None
        stored = registry.find_device_by_name(f"{prefix}-3")
        assert stored.profile_name == prefix and stored.credentials_type is CredentialsType.ACCESS_TOKEN
        assert registry.get_attributes(stored.id, AttributeScope.SHARED) == {"model": "M-3"}


def test_the_pages_fit_a_375_pixel_wide_screen(browser: Browser, gh):
    _, sidecar = gh
    with registry_of(gh) as registry:
        device = registry.create_device(unique("narrow-device-with-a-long-name"))
    context = browser.new_context(base_url=sidecar.url, viewport=NARROW)
    try:
        page = context.new_page()
        log_in(page)
        for path in ("/ui/devices", "/ui/profiles", "/ui/profiles/new", "/ui/import", f"/ui/devices/{device.id}"):
            page.goto(path)
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, (path, overflow)
        page.screenshot(path=ARTIFACTS / "device-375px.png", full_page=True)
        page.goto("/ui/devices")
        page.screenshot(path=ARTIFACTS / "devices-375px.png", full_page=True)
    finally:
        context.close()
