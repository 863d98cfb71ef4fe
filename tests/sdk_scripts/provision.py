"""Provision one device with ThingsBoard's own SDK, unchanged; run under .venv-sdk/bin/python.

    provision.py HOST PORT '{"provision_device_key": "...", "provision_device_secret": "...", ...}'

The JSON object holds the keyword arguments of `TBDeviceMqttClient.provision` besides host and
port. Prints what the SDK returns (the credentials, or null when provisioning failed) as JSON
on stdout; the SDK's own log (with the status of a refusal) goes to stderr.
"""
import json
import logging
import sys

from tb_device_mqtt import TBDeviceMqttClient

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

host, port, kwargs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
credentials = TBDeviceMqttClient.provision(host, port=port, **kwargs)
print(json.dumps(credentials))
