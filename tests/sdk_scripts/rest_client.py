"""Drive the admin REST API with ThingsBoard's own REST client (tb-rest-client, unchanged); run
under .venv-sdk/bin/python.

    rest_client.py URL '{"username", "password", "profile", "key", "secret", "device",
                         "client_id", "user_name", "mqtt_password", "bulk_csv"}'

Logs in, creates a device profile with provisioning (ALLOW_CREATE_NEW_DEVICES, key and secret),
creates a device in it with MQTT basic credentials, reads and updates things the way a
ThingsBoard script does, deletes the device, and prints what the client returned along the way
as one JSON object (models as the client's own to_dict(), with its snake_case names). The
client's log goes to stderr. Any exception makes the script fail.
"""
import json
import logging
import sys

from tb_rest_client.rest import ApiException

# As ThingsBoard's docs import the client: its module brings the models along.
try:  # tb-rest-client 3.x: one client per edition
    from tb_rest_client.rest_client_ce import *
    from tb_rest_client.rest_client_ce import RestClientCE as RestClient
except ImportError:  # 4.x: one client for both editions
    from tb_rest_client.rest_client import *

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

url, plan = sys.argv[1], json.loads(sys.argv[2])
said = {}


def model(value):
    """What the client returned, as JSON-able data (its models, lists and dicts of them)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, list):
        return [model(item) for item in value]
    if isinstance(value, dict):
        return {key: model(item) for key, item in value.items()}
    return value


with RestClient(base_url=url) as client:
    client.login(username=plan["username"], password=plan["password"])
    said["token_exp"] = client.token_info["exp"]  # the client decodes the JWT to schedule its refresh
    client.refresh()
    said["refreshed"] = bool(client.get_token())

    profile = client.save_device_profile(DeviceProfile(
        name=plan["profile"], type="DEFAULT", transport_type="DEFAULT", provision_type="ALLOW_CREATE_NEW_DEVICES",
        provision_device_key=plan["key"],
        profile_data=DeviceProfileData(
            configuration=DefaultDeviceProfileConfiguration(type="DEFAULT"),
            transport_configuration=DefaultDeviceProfileTransportConfiguration(type="DEFAULT"),
            provision_configuration=AllowCreateNewDevicesDeviceProfileProvisionConfiguration(
                type="ALLOW_CREATE_NEW_DEVICES", provision_device_secret=plan["secret"]))))
    said["profile"] = model(profile)
    said["profile_read"] = model(client.get_device_profile_by_id(profile.id))
    mqtt_profile = client.save_device_profile(DeviceProfile(
        name="sdk-mqtt-transport-profile", type="DEFAULT", transport_type="MQTT", provision_type="DISABLED",
        profile_data=DeviceProfileData(
            configuration=DefaultDeviceProfileConfiguration(type="DEFAULT"),
            transport_configuration=MqttDeviceProfileTransportConfiguration(
                type="MQTT", device_telemetry_topic="sensors/+/data", device_attributes_topic="sensors/+/state",
                device_attributes_subscribe_topic="v1/devices/me/attributes", send_ack_on_validation_exception=True,
                transport_payload_type_configuration=JsonTransportPayloadConfiguration(transport_payload_type="JSON")),
            provision_configuration=DisabledDeviceProfileProvisionConfiguration(type="DISABLED"))))
    said["mqtt_profile_read"] = model(client.get_device_profile_by_id(mqtt_profile.id))
    said["profiles_page"] = model(client.get_device_profiles(page_size=100, page=0, text_search=plan["profile"]))
    try:
        client.save_device_profile(DeviceProfile(name=plan["profile"] + "-same-key", provision_type="ALLOW_CREATE_NEW_DEVICES",
                                                 provision_device_key=plan["key"]))
    except ApiException as e:
        said["duplicate_key"] = {"status": e.status, "body": json.loads(e.body)}

    basic = {"clientId": plan["client_id"], "userName": plan["user_name"], "password": plan["mqtt_password"]}
    device = client.save_device_with_credentials(SaveDeviceWithCredentialsRequest(
        device=Device(name=plan["device"], label="made by tb-rest-client", device_profile_id=profile.id),
        credentials=DeviceCredentials(credentials_type="MQTT_BASIC", credentials_id=plan["client_id"],
                                      credentials_value=json.dumps(basic))))
    said["device"] = model(device)
    credentials = client.get_device_credentials_by_device_id(device.id)
    said["credentials"] = model(credentials)
    said["by_name"] = model(client.get_tenant_device(plan["device"]))
    said["devices_page"] = model(client.get_tenant_devices(page_size=10, page=0, text_search=plan["device"]))

    client.save_device_attributes(device.id, "SHARED_SCOPE", {"targetTemp": 21.5, "mode": "eco"})
    client.save_device_attributes(device.id, "SERVER_SCOPE", {"installedBy": "sdk"})
    said["shared"] = model(client.get_attributes_by_scope(device.id, "SHARED_SCOPE", keys="targetTemp,mode"))
    client.delete_device_attributes(device.id, "SHARED_SCOPE", keys="mode")
    said["attributes"] = model(client.get_attributes(device.id))
    said["latest"] = model(client.get_latest_timeseries(device.id))

    credentials.credentials_value = json.dumps({**basic, "password": plan["mqtt_password"] + "-rotated"})
    said["credentials_updated"] = model(client.update_device_credentials(credentials))

    said["bulk_import"] = model(client.process_devices_bulk_import(BulkImportRequest(
        file=plan["bulk_csv"], mapping=Mapping(columns=[ColumnMapping(type="NAME"), ColumnMapping(type="TYPE"),
                                                        ColumnMapping(type="ACCESS_TOKEN")],
                                               delimiter=",", update=True, header=True))))

    client.delete_device(device.id)
    try:
        client.get_device_by_id(device.id)
    except ApiException as e:
        said["after_delete"] = {"status": e.status, "body": json.loads(e.body)}

print(json.dumps(said))
