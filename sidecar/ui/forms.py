"""The web UI's forms (Flask-WTF: each carries a CSRF token) and the step from a submitted form to
the domain's arguments. Forms check shape only (a choice among the offered ones, an upload's
encoding); every rule about the data is the registry's, and its refusals are shown next to the
field they concern."""
from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import (
    BooleanField,
    PasswordField,
    RadioField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.widgets import TextInput

from gatehouse.credentials import (
    AccessToken,
    CredentialsError,
    MqttBasic,
    NewCredentials,
    X509Certificate,
)
from gatehouse.models import CredentialsType, ProvisionType
from gatehouse.mqtt_topic_settings import DEFAULT_ATTRIBUTES_TOPIC, DEFAULT_TELEMETRY_TOPIC
from gatehouse.registry import DEFAULT_CN_REGEX

STRATEGY_LABELS = {
    ProvisionType.DISABLED: "Disabled",
    ProvisionType.ALLOW_CREATE_NEW_DEVICES: "Allow creating new devices",
    ProvisionType.CHECK_PRE_PROVISIONED_DEVICES: "Check pre-provisioned devices",
    ProvisionType.X509_CERTIFICATE_CHAIN: "X.509 certificate chain",
}
CREDENTIALS_LABELS = {
    CredentialsType.ACCESS_TOKEN: "Access token",
    CredentialsType.MQTT_BASIC: "MQTT basic",
    CredentialsType.X509_CERTIFICATE: "X.509 certificate",
}
MAX_UPLOAD_BYTES = 1 << 20  # a certificate or a CA chain; CSV files have their own limit


class FieldError(Exception):
    """Input refused, with the form field it concerns (None: the form as a whole)."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


# The form field of each input a registry refusal names (ValidationError.field) where the two
# names differ; the others are the same. A refusal that names no field of this form is shown
# above the form.
_FORM_FIELDS = {"credentials": "credentials_type", "provision_key": "key", "provision_secret": "secret",
                "mqtt_topics": "transport"}


def show_error(form: FlaskForm, error: Exception) -> None:
    """Put a refusal next to its field, or in the form's own errors."""
    if isinstance(error, FieldError):
        field = error.field
    else:
        field = getattr(error, "field", None)
        field = _FORM_FIELDS.get(field, field)
    message = error.message if isinstance(error, FieldError) else str(error)
    if field is not None and field in form:
        form[field].errors = [*form[field].errors, message]
    else:
        form.form_errors.append(message)


def uploaded_text(form: FlaskForm, field: str, limit: int = MAX_UPLOAD_BYTES) -> str | None:
    """An uploaded file's text (UTF-8); None if no file was chosen."""
    storage = form[field].data
    if storage is None or not getattr(storage, "filename", ""):
        return None
    data = storage.stream.read(limit + 1)
    if len(data) > limit:
        raise FieldError(field, f"The file is larger than {limit // 1024} KiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FieldError(field, "The file is not UTF-8 text") from None


class SecretInput(TextInput):
    """A text input that never sends a typed secret back: a refused form comes back with it empty
    (secrets appear in pages only when an operator reveals them)."""

    def __call__(self, field, **kwargs):
        kwargs["value"] = ""
        kwargs.setdefault("autocomplete", "off")
        return super().__call__(field, **kwargs)


def _choices(labels: dict) -> list[SelectChoice]:
    return [SelectChoice(kind.value, label) for kind, label in labels.items()]


class LoginForm(FlaskForm):
    username = StringField("Username")
    password = PasswordField("Password")


class ProfileForm(FlaskForm):
    name = StringField("Name")
    description = TextAreaField("Description")
    strategy = SelectField("Provisioning strategy", choices=_choices(STRATEGY_LABELS),
                           default=ProvisionType.DISABLED.value)
    key = StringField("Provision device key", description="Left empty: generated (or, when editing, kept).")
    secret = StringField("Provision device secret", widget=SecretInput(),
                         description="Left empty: generated (or, when editing, kept).")
    ca_certificate = FileField("CA certificate (PEM)", description="When editing, left empty: kept.")
    cn_regex = StringField("CN regex", default=DEFAULT_CN_REGEX,
                           description="Group 1 of the first match in the certificate's CN is the device name.")
    allow_create = BooleanField("Create devices for new certificates", default=True)
    transport = SelectField("Transport", choices=[SelectChoice("DEFAULT", "Default: JSON on the v1/devices/me topics"),
                                                  SelectChoice("MQTT", "MQTT: the profile's own topics")],
                            default="DEFAULT")
    mqtt_telemetry_topic = StringField("Telemetry topic", default=DEFAULT_TELEMETRY_TOPIC,
                                       description="Wildcards: + for one level, # for all below.")
    mqtt_attributes_topic = StringField("Attributes topic", default=DEFAULT_ATTRIBUTES_TOPIC)
    mqtt_attributes_subscribe_topic = StringField(
        "Attribute updates subscription", default=DEFAULT_ATTRIBUTES_TOPIC,
        description="Devices subscribing to it get shared attribute updates (on v1/devices/me/attributes).")
    mqtt_send_ack = BooleanField("Acknowledge an invalid QoS 1 payload instead of closing the connection")


class CredentialsForm(FlaskForm):
    credentials_type = RadioField("Credentials", choices=_choices(CREDENTIALS_LABELS),
                                  default=CredentialsType.ACCESS_TOKEN.value)
    token = StringField("Access token", widget=SecretInput(), description="Left empty: a generated one.")
    client_id = StringField("Client id")
    user_name = StringField("User name")
    password = StringField("Password", widget=SecretInput())
    certificate = FileField("Device certificate (PEM)")

    def credentials(self) -> NewCredentials | None:
        """The credentials asked for; None for a generated access token."""
        kind = CredentialsType(self.credentials_type.data)
        try:
            if kind is CredentialsType.ACCESS_TOKEN:
                return AccessToken(self.token.data) if self.token.data else None
            if kind is CredentialsType.MQTT_BASIC:
                return MqttBasic(self.client_id.data or None, self.user_name.data or None, self.password.data or None)
        except CredentialsError as e:
            raise FieldError("token" if kind is CredentialsType.ACCESS_TOKEN else "client_id", str(e)) from None
        text = uploaded_text(self, "certificate")
        if text is None:
            raise FieldError("certificate", "Choose the device's certificate file")
        try:
            return X509Certificate.parse(text)
        except CredentialsError as e:
            raise FieldError("certificate", str(e)) from None


class DeviceForm(CredentialsForm):
    name = StringField("Name")
    label = StringField("Label")
    profile = SelectField("Device profile")


class SharedAttributeForm(FlaskForm):
    key = StringField("Key")
    value = StringField("Value", description="JSON (42, true, {\"a\": 1}, \"text\") or plain text.")


class ImportForm(FlaskForm):
    file = FileField("CSV file")
    delimiter = SelectField("Delimiter", choices=[SelectChoice(",", "comma ,"), SelectChoice(";", "semicolon ;"),
                                                       SelectChoice("\t", "tab"), SelectChoice("|", "bar |")])
    update = BooleanField("Update existing devices' attributes and telemetry", default=True)
