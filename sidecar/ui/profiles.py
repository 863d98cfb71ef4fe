"""Device profile pages: list, create, edit, delete; provisioning key and secret with reveal,
copy and regenerate; an X.509 chain profile's CA upload and CN regex, with a preview of the
device name a sample CN yields (the provisioning code's own rule)."""
from __future__ import annotations

from types import SimpleNamespace

from flask import flash, jsonify, redirect, render_template, request, url_for

from gatehouse.credentials import generate_secret
from gatehouse.errors import ValidationError
from gatehouse.models import DeviceProfile, ProvisionType
from gatehouse.mqtt_topic_settings import MqttTopicSettings
from gatehouse.provisioning import device_name_from_common_name
from gatehouse.registry import DEFAULT_CN_REGEX, KEY_SECRET_STRATEGIES

from .blueprint import registry, ui
from .forms import STRATEGY_LABELS, FieldError, ProfileForm, show_error, uploaded_text


@ui.route("/profiles")
def profiles():
    return render_template("ui/profiles.html", profiles=registry().list_profiles(), labels=STRATEGY_LABELS)


def _settings(form: ProfileForm, current: DeviceProfile | None) -> dict:
    """The registry's provisioning arguments from the form: key and secret only for the key/secret
    strategies, the CA only for an X.509 chain (an edit keeps the current CA unless a new one is
    uploaded)."""
    strategy = ProvisionType(form.strategy.data)
    settings = {"key": None, "secret": None, "ca_certificate_pem": None, "cn_regex": DEFAULT_CN_REGEX,
                "allow_create": True, "description": form.description.data or None,
                "mqtt_topics": _mqtt_topics(form)}
    if strategy in KEY_SECRET_STRATEGIES:
        settings.update(key=form.key.data or None, secret=form.secret.data or None)
    elif strategy is ProvisionType.X509_CERTIFICATE_CHAIN:
        ca = uploaded_text(form, "ca_certificate")
        if ca is None and current is not None and current.provision_type is strategy:
            ca = current.provision_device_secret
        if ca is None:
            raise FieldError("ca_certificate", "Upload the CA certificate that issues the devices' certificates")
        settings.update(ca_certificate_pem=ca, cn_regex=form.cn_regex.data or DEFAULT_CN_REGEX,
                        allow_create=form.allow_create.data)
    return settings


def _mqtt_topics(form: ProfileForm) -> MqttTopicSettings | None:
    if form.transport.data != "MQTT":
        return None
    return MqttTopicSettings(form.mqtt_telemetry_topic.data, form.mqtt_attributes_topic.data,
                         form.mqtt_attributes_subscribe_topic.data, form.mqtt_send_ack.data)


def _save(form: ProfileForm, current: DeviceProfile | None) -> DeviceProfile | None:
    """The saved profile, or None with the refusal shown on the form (nothing saved)."""
    if not form.validate_on_submit():
        return None
    try:
        settings = _settings(form, current)
        strategy = ProvisionType(form.strategy.data)
        if current is None:
            return registry().create_profile(form.name.data, strategy, **settings)
        return registry().update_profile(current.id, form.name.data, strategy, **settings)
    except (FieldError, ValidationError) as e:
        show_error(form, e)
        return None


@ui.route("/profiles/new", methods=["GET", "POST"])
def new_profile():
    form = ProfileForm()
    profile = _save(form, None)
    if profile is not None:
        flash(f"Profile {profile.name} created.")
        return redirect(url_for("ui.profile", profile_id=profile.id))
    return render_template("ui/profile_form.html", form=form, profile=None), 200 if request.method == "GET" else 400


@ui.route("/profiles/<profile_id>", methods=["GET", "POST"])
def profile(profile_id: str):
    current = registry().get_profile(profile_id, by_id=True)
    form = ProfileForm(obj=None if request.method == "POST" else _form_values(current))
    saved = _save(form, current)
    if saved is not None:
        flash(f"Profile {saved.name} saved.")
        return redirect(url_for("ui.profile", profile_id=saved.id))
    return _profile_page(current, form, revealed=False, status=200 if request.method == "GET" else 400)


def _form_values(profile: DeviceProfile) -> SimpleNamespace:
    """A profile's settings as the form's fields name them (key, secret and CA are not prefilled:
    left empty, an edit keeps them)."""
    transport = profile.mqtt_topics or MqttTopicSettings()
    return SimpleNamespace(
        name=profile.name, description=profile.description, strategy=profile.provision_type.value,
        cn_regex=profile.certificate_regex or DEFAULT_CN_REGEX,
        allow_create=True if profile.allow_create_by_x509 is None else profile.allow_create_by_x509,
        transport=profile.transport_type, mqtt_telemetry_topic=transport.telemetry_topic,
        mqtt_attributes_topic=transport.attributes_topic,
        mqtt_attributes_subscribe_topic=transport.attributes_subscribe_topic,
        mqtt_send_ack=transport.send_ack_on_validation_exception)


def _profile_page(profile: DeviceProfile, form: ProfileForm, *, revealed: bool, status: int = 200):
    return render_template("ui/profile_form.html", form=form, profile=profile, revealed=revealed,
                           key_secret=profile.provision_type in KEY_SECRET_STRATEGIES), status


@ui.route("/profiles/<profile_id>/reveal", methods=["POST"])
def reveal_profile_secret(profile_id: str):
    current = registry().get_profile(profile_id, by_id=True)
    return _profile_page(current, ProfileForm(formdata=None, obj=_form_values(current)), revealed=True)


@ui.route("/profiles/<profile_id>/regenerate", methods=["POST"])
def regenerate_profile_secrets(profile_id: str):
    """A new key and secret: devices provisioned already keep working, new ones need the new pair."""
    current = registry().get_profile(profile_id, by_id=True)
    if current.provision_type not in KEY_SECRET_STRATEGIES:
        flash("Only key and secret strategies have a key and a secret.", "error")
    else:
        registry().update_profile(current.id, current.name, current.provision_type, key=generate_secret(),
                                   secret=generate_secret(), description=current.description,
                                   mqtt_topics=current.mqtt_topics)
        flash("New provision key and secret generated.")
    return redirect(url_for("ui.profile", profile_id=current.id))


@ui.route("/profiles/<profile_id>/default", methods=["POST"])
def make_default_profile(profile_id: str):
    profile = registry().set_default_profile(profile_id, by_id=True)
    flash(f"{profile.name} is now the default profile.")
    return redirect(url_for("ui.profiles"))


@ui.route("/profiles/<profile_id>/delete", methods=["POST"])
def delete_profile(profile_id: str):
    current = registry().get_profile(profile_id, by_id=True)
    try:
        registry().delete_profile(current.id, by_id=True)
    except ValidationError as e:
        flash(str(e), "error")
        return redirect(url_for("ui.profile", profile_id=current.id))
    flash(f"Profile {current.name} deleted.")
    return redirect(url_for("ui.profiles"))


@ui.route("/profiles/cn-preview")
def cn_preview():
    """The device name X.509 chain provisioning derives from a sample CN with a regex."""
    name = device_name_from_common_name(request.args.get("cn", ""), request.args.get("regex", ""))
    return jsonify({"name": name})
