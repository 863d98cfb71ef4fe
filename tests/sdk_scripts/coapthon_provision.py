"""ThingsBoard's CoAP provisioning example (CoAPthon3's HelperClient), unchanged in its steps:
POST the provisioning request to coap://HOST:PORT/api/v1/provision, read credentialsValue from
the JSON answer, then POST telemetry with that token. Prints one JSON line for the test."""
import json
import sys

from coapthon import defines
from coapthon.client.helperclient import HelperClient

host, port, name, key, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
client = HelperClient(server=(host, port))
try:
    request = {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret}
    response = client.post("api/v1/provision", json.dumps(request), timeout=10)
    credentials = json.loads(response.payload)
    telemetry = client.post(f"api/v1/{credentials['credentialsValue']}/telemetry", '{"temperature": 22.5}',
                            timeout=10)
    print(json.dumps({"provision_code": response.code, "status": credentials["status"],
                      "telemetry_code": telemetry.code, "created": defines.Codes.CREATED.number}))
finally:
    client.stop()
