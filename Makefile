# The two set-up commands: `make up` runs Gatehouse on its embedded defaults, `make test` runs
# the whole suite. Both build .venv from setup.cfg on a machine with Python 3.11, make and apt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# ThingsBoard's own SDK ships a fork of paho under the same module name as paho-mqtt, so it gets
# a virtual environment of its own; tests run its unchanged client code there.
SDK_VENV := .venv-sdk
# Real clients the tests drive, from Debian (chromium: the web UI's browser tests, via Playwright;
# iproute2: ss, which reads a listening socket's backlog; systemd: systemd-analyze, which checks
# the units in deploy/; postgresql: the server of the PostgreSQL store's tests, a throwaway
# cluster per run, tests/postgres_cluster.py).
DEBIAN_TEST_PACKAGES := mosquitto-clients libcoap3-bin chromium iproute2 systemd postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: up test bench soak clean debian-test-packages

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamp files re-run the install when the package metadata changes.
$(VENV)/.installed: $(BIN)/activate setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/activate setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

up: $(VENV)/.installed
	$(BIN)/gatehouse up

$(SDK_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(SDK_VENV)
	# mmh3 too: the SDK pip-installs it at import time otherwise. tb-rest-client drives the admin
	# API; before 4.4 it cannot decode ThingsBoard's bulk import result (AtomicInteger fields).
	# coapthon3: the CoAP client of ThingsBoard's CoAP provisioning example (tests/test_coap_bridge.py).
	$(SDK_VENV)/bin/pip install --quiet 'tb-mqtt-client>=1.13' mmh3 'tb-rest-client>=4.4' 'coapthon3>=1.0.2'
	touch $@

debian-test-packages:
	@missing=""; for p in $(DEBIAN_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

test: $(VENV)/.installed-test $(SDK_VENV)/.installed debian-test-packages
	$(BIN)/pytest

# Every benchmark, full size, one after another, the soak included (about 24 minutes); writes
# bench/RESULTS.md.
bench: $(VENV)/.installed-test
	$(BIN)/python bench/report.py

# About 12 minutes: a reconnect storm of 2,000 devices, a 10-minute telemetry soak (memory over
# time) and telemetry latency beside a bulk import.
soak: $(VENV)/.installed-test
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) $(SDK_VENV) build *.egg-info
