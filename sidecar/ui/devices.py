"""Device pages: a searchable, paged list with provisioning and connection state; creation with
any credentials type; a device's credentials (secrets hidden until revealed), rotation, deletion,
attributes by scope (shared ones edited and pushed to the device; times such as lastActivityTime
shown in UTC), latest telemetry and its provisioning events.

"Connected now" is a live session (MQTT, or a CoAP observation), never a recent HTTP request:
HTTP devices show their last activity only (gatehouse.device_activity.is_connected)."""
from __future__ import annotations

import json

from flask import abort, flash, redirect, render_template, request, url_for
from wtforms.fields.choices import SelectChoice

from gatehouse.clock import timestamp_text, utc_text
from gatehouse.credentials import AccessToken, generate_secret
from gatehouse.device_activity import (  # shown as "—" until stored
    ACTIVE,
    ACTIVITY_ATTRIBUTES,
    LAST_ACTIVITY_TIME,
    is_connected,
)
from gatehouse.errors import ValidationError
from gatehouse.models import AttributeScope, CredentialsType, Device
from gatehouse.payloads import PayloadError, parse_attributes
from gatehouse.provisioning import PROVISION_STATE_KEY, PROVISIONED

from ..admin_payloads import MAX_ATTRIBUTES_BYTES
from ..context import sidecar
from .blueprint import registry, ui
from .forms import (
    CREDENTIALS_LABELS,
    CredentialsForm,
    DeviceForm,
    FieldError,
    SharedAttributeForm,
    show_error,
)

PAGE_SIZE = 20
SCOPES = (("Client", AttributeScope.CLIENT), ("Shared", AttributeScope.SHARED), ("Server", AttributeScope.SERVER))


def _device(device_id: str) -> Device:
    return registry().get_device(device_id, by_id=True)


def format_ms(ms) -> str:
    """A ms-since-epoch time as UTC text; "—" when absent or not a time."""
    return utc_text(ms) or "—"


ui.add_app_template_filter(format_ms, "ui_time")
ui.add_app_template_global(timestamp_text, "attribute_time")  # UTC text for time attributes, else None


def _connected_text(server: dict) -> str:
    """yes: a live MQTT session or CoAP observation; no: seen, but not connected now (an HTTP
    device never is: it has no sessions); —: never seen."""
    if not isinstance(server.get(ACTIVE), bool):
        return "—"
    return "yes" if is_connected(server) else "no"


def _state(device: Device) -> dict:
    server = registry().get_attributes(device.id, AttributeScope.SERVER, [*ACTIVITY_ATTRIBUTES, PROVISION_STATE_KEY])
    return {"provisioned": server.get(PROVISION_STATE_KEY) == PROVISIONED, "connected": _connected_text(server),
            "last_activity": format_ms(server.get(LAST_ACTIVITY_TIME))}


@ui.route("/devices")
def devices():
    search = request.args.get("q", "").strip() or None
    try:
        page = max(0, int(request.args.get("page", "0")))
    except ValueError:
        page = 0
    total = registry().count_devices(name_contains=search)
    listed = registry().list_devices(offset=page * PAGE_SIZE, limit=PAGE_SIZE, name_contains=search)
    rows = [(device, _state(device)) for device in listed]
    return render_template("ui/devices.html", rows=rows, search=search or "", page=page, total=total,
                           pages=max(1, -(-total // PAGE_SIZE)), labels=CREDENTIALS_LABELS)


def _profile_choices() -> list[SelectChoice]:
    profiles = sorted(registry().list_profiles(), key=lambda p: not p.is_default)  # the default first
    return [SelectChoice(p.id, p.name + (" (default)" if p.is_default else "")) for p in profiles]


@ui.route("/devices/new", methods=["GET", "POST"])
def new_device():
    form = DeviceForm()
    form.profile.choices = _profile_choices()
    if form.validate_on_submit():
        try:
            device = registry().save_device(form.name.data, profile_id=form.profile.data, label=form.label.data or None,
                                             credentials=form.credentials())
        except (FieldError, ValidationError) as e:
            show_error(form, e)
        else:
            flash(f"Device {device.name} created.")
            return redirect(url_for("ui.device", device_id=device.id))
    return render_template("ui/device_form.html", form=form), 200 if request.method == "GET" else 400


def _device_page(device: Device, *, revealed: bool = False, credentials_form: CredentialsForm | None = None,
                 attribute_form: SharedAttributeForm | None = None, status: int = 200):
    credentials = registry().get_credentials(device.id, by_id=True)
    mqtt = None
    if credentials.credentials_type is CredentialsType.MQTT_BASIC:
        mqtt = json.loads(credentials.credentials_value)  # shown only when revealed
    attributes = [(label, registry().attribute_data(device.id, scope)) for label, scope in SCOPES]
    return render_template(
        "ui/device.html", device=device, state=_state(device), credentials=credentials, mqtt=mqtt, revealed=revealed,
        labels=CREDENTIALS_LABELS, credentials_form=credentials_form or CredentialsForm(formdata=None),
        attribute_form=attribute_form or SharedAttributeForm(formdata=None), attributes=attributes,
        telemetry=registry().latest_telemetry(device.id), events=registry().provisioning_events(device.id)), status


@ui.route("/devices/<device_id>")
def device(device_id: str):
    return _device_page(_device(device_id))


@ui.route("/devices/<device_id>/credentials/reveal", methods=["POST"])
def reveal_credentials(device_id: str):
    return _device_page(_device(device_id), revealed=True)


@ui.route("/devices/<device_id>/credentials", methods=["POST"])
def rotate_credentials(device_id: str):
    """New credentials of any type (a generated token by default); the device's sessions with the
    old ones end."""
    current = _device(device_id)
    form = CredentialsForm()
    if form.validate_on_submit():
        try:
            record = registry().get_credentials(current.id, by_id=True)
            registry().update_credentials(current.id, record.id, form.credentials() or AccessToken(generate_secret()))
        except (FieldError, ValidationError) as e:
            show_error(form, e)
        else:
            flash("Credentials replaced. Reveal them to copy them to the device.")
            return redirect(url_for("ui.device", device_id=current.id))
    return _device_page(current, credentials_form=form, status=400)


@ui.route("/devices/<device_id>/delete", methods=["POST"])
def delete_device(device_id: str):
    current = _device(device_id)
    registry().delete_device(current.id, by_id=True)
    flash(f"Device {current.name} deleted.")
    return redirect(url_for("ui.devices"))


def _shared_entries(form: SharedAttributeForm):
    """The key and value as one attributes message, read by the admin API's parser with its
    limit: a value is JSON if it reads as JSON, else text."""
    key, value = (form.key.data or "").strip(), form.value.data or ""
    if not key:
        raise FieldError("key", "Key should be specified!")
    try:
        json.loads(value)
        value_json = value
    except ValueError:
        value_json = json.dumps(value)
    entries = parse_attributes(f"{{{json.dumps(key)}:{value_json}}}".encode(), max_bytes=MAX_ATTRIBUTES_BYTES)
    if isinstance(entries, PayloadError):
        raise FieldError("value", entries.message)
    if not entries:
        raise FieldError("value", "A null value is no attribute: delete the attribute instead")
    return entries


@ui.route("/devices/<device_id>/attributes/shared", methods=["POST"])
def save_shared_attribute(device_id: str):
    current = _device(device_id)
    form = SharedAttributeForm()
    if form.validate_on_submit():
        try:
            sidecar().change_shared_attributes(current.id, _shared_entries(form))
        except FieldError as e:
            show_error(form, e)
        else:
            flash(f"Shared attribute {form.key.data.strip()} saved and sent to the device.")
            return redirect(url_for("ui.device", device_id=current.id) + "#attributes")
    return _device_page(current, attribute_form=form, status=400)


@ui.route("/devices/<device_id>/attributes/shared/delete", methods=["POST"])
def delete_shared_attribute(device_id: str):
    current = _device(device_id)
    key = request.form.get("key", "")
    if not key:
        abort(400, "Key should be specified!")
    sidecar().change_shared_attributes(current.id, deleted=[key])
    flash(f"Shared attribute {key} deleted.")
    return redirect(url_for("ui.device", device_id=current.id) + "#attributes")
