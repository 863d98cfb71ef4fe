-- Gatehouse database schema: the single source of truth for a new database.
--
-- Applied once by the migration "0001_initial" (gatehouse/migrations.py); later changes are
-- further migrations, recorded with this one in _sqlite_migrations. Times are epoch
-- milliseconds, ids are UUID strings, JSON columns are checked with json_valid().
--
-- Secrets at rest: access tokens and MQTT client ids / user names / passwords are never stored
-- in plain text. Lookups use an HMAC digest keyed by the server key in the data dir; where the
-- API must give a secret back (pre-provisioned responses, admin view) an AES-GCM sealed copy
-- is kept. See gatehouse/server_key.py.

CREATE TABLE device_profile (
    id                        TEXT PRIMARY KEY,
    created_time              INTEGER NOT NULL,
    name                      TEXT NOT NULL UNIQUE CHECK (length(trim(name)) > 0),
    description               TEXT,
    is_default                INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    provision_type            TEXT NOT NULL DEFAULT 'DISABLED' CHECK (provision_type IN (
                                  'DISABLED', 'ALLOW_CREATE_NEW_DEVICES',
                                  'CHECK_PRE_PROVISIONED_DEVICES', 'X509_CERTIFICATE_CHAIN')),
    -- Globally unique, as in ThingsBoard; for X509_CERTIFICATE_CHAIN it is the SHA3 hash of the
    -- profile's CA certificate, so one CA backs at most one profile.
    provision_device_key      TEXT UNIQUE,
    -- Key/secret strategies: the provision secret, AES-GCM sealed.
    sealed_provision_secret   BLOB,
    -- X509_CERTIFICATE_CHAIN: the trusted CA certificate (PEM), CN regex, create flag.
    ca_certificate_pem        TEXT,
    certificate_regex         TEXT,
    allow_create_by_x509      INTEGER CHECK (allow_create_by_x509 IN (0, 1)),
    -- MQTT transport settings (SPEC §2.8, gatehouse/mqtt_transport.py; migration 0005): all
    -- NULL is ThingsBoard's DEFAULT transport, JSON on the v1/devices/me/... topics; the registry
    -- sets all four or none (no table CHECK: a migration cannot add one to older files).
    mqtt_telemetry_topic      TEXT,
    mqtt_attributes_topic     TEXT,
    mqtt_attributes_subscribe_topic TEXT,
    mqtt_send_ack_on_validation_exception INTEGER CHECK (mqtt_send_ack_on_validation_exception IN (0, 1)),
    CHECK (provision_type = 'DISABLED' OR provision_device_key IS NOT NULL),
    CHECK (provision_type NOT IN ('ALLOW_CREATE_NEW_DEVICES', 'CHECK_PRE_PROVISIONED_DEVICES')
           OR sealed_provision_secret IS NOT NULL),
    CHECK (provision_type <> 'X509_CERTIFICATE_CHAIN'
           OR (ca_certificate_pem IS NOT NULL AND certificate_regex IS NOT NULL
               AND allow_create_by_x509 IS NOT NULL))
);
-- ThingsBoard keeps exactly one default profile per tenant; we have one tenant.
CREATE UNIQUE INDEX device_profile_one_default ON device_profile (is_default) WHERE is_default = 1;

CREATE TABLE device (
    id                        TEXT PRIMARY KEY,
    created_time              INTEGER NOT NULL,
    name                      TEXT NOT NULL UNIQUE CHECK (length(trim(name)) BETWEEN 1 AND 255),
    profile_id                TEXT NOT NULL REFERENCES device_profile (id),
    label                     TEXT,
    additional_info           TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(additional_info))
);
CREATE INDEX device_by_profile ON device (profile_id);

CREATE TABLE device_credentials (
    id                        TEXT PRIMARY KEY,
    created_time              INTEGER NOT NULL,
    device_id                 TEXT NOT NULL UNIQUE REFERENCES device (id) ON DELETE CASCADE,
    credentials_type          TEXT NOT NULL CHECK (credentials_type IN (
                                  'ACCESS_TOKEN', 'MQTT_BASIC', 'X509_CERTIFICATE')),
    -- HMAC of ThingsBoard's credentialsId: unique across all types (a token and a user-name-only
    -- MQTT_BASIC credential share one namespace) and the key of every login lookup.
    lookup_digest             BLOB NOT NULL UNIQUE,
    -- credentialsId when it is a public SHA3 identifier (X.509, MQTT_BASIC with a client id);
    -- NULL when it is itself a secret (an access token, a bare MQTT user name).
    public_credentials_id     TEXT,
    -- ACCESS_TOKEN: the token; MQTT_BASIC: ThingsBoard's credentialsValue JSON.
    sealed_value              BLOB,
    -- MQTT_BASIC parts compared at login; NULL when the part is empty.
    client_id_digest          BLOB,
    user_name_digest          BLOB,
    password_digest           BLOB,
    -- X509_CERTIFICATE: single-line Base64 DER (ThingsBoard's credentialsValue).
    certificate               TEXT,
    version                   INTEGER NOT NULL DEFAULT 1,
    CHECK (credentials_type <> 'ACCESS_TOKEN' OR sealed_value IS NOT NULL),
    CHECK (credentials_type <> 'MQTT_BASIC' OR sealed_value IS NOT NULL),
    CHECK (credentials_type <> 'X509_CERTIFICATE' OR certificate IS NOT NULL)
);

-- Attribute and telemetry values are declared BLOB, which in SQLite means "no affinity": a value
-- is kept as it is bound. A numeric affinity would turn STRING values such as "1e5" or " 12 " into
-- numbers, which `kind` could not undo.
CREATE TABLE attribute (
    device_id                 TEXT NOT NULL REFERENCES device (id) ON DELETE CASCADE,
    scope                     TEXT NOT NULL CHECK (scope IN ('CLIENT_SCOPE', 'SHARED_SCOPE', 'SERVER_SCOPE')),
    key                       TEXT NOT NULL,
    kind                      TEXT NOT NULL CHECK (kind IN ('BOOLEAN', 'LONG', 'DOUBLE', 'STRING', 'JSON')),
    value                     BLOB,
    last_update_ts            INTEGER NOT NULL,
    PRIMARY KEY (device_id, scope, key)
) WITHOUT ROWID;

CREATE TABLE telemetry_latest (
    device_id                 TEXT NOT NULL REFERENCES device (id) ON DELETE CASCADE,
    key                       TEXT NOT NULL,
    ts                        INTEGER NOT NULL,
    kind                      TEXT NOT NULL CHECK (kind IN ('BOOLEAN', 'LONG', 'DOUBLE', 'STRING', 'JSON')),
    value                     BLOB,
    PRIMARY KEY (device_id, key)
) WITHOUT ROWID;

-- Same (device, key, ts) overwrites, as in ThingsBoard's ts_kv.
CREATE TABLE telemetry_history (
    device_id                 TEXT NOT NULL REFERENCES device (id) ON DELETE CASCADE,
    key                       TEXT NOT NULL,
    ts                        INTEGER NOT NULL,
    kind                      TEXT NOT NULL CHECK (kind IN ('BOOLEAN', 'LONG', 'DOUBLE', 'STRING', 'JSON')),
    value                     BLOB,
    PRIMARY KEY (device_id, key, ts)
) WITHOUT ROWID;
-- Retention deletes by age.
CREATE INDEX telemetry_history_by_ts ON telemetry_history (ts);

-- Audit trail of every provisioning attempt, whatever its outcome.
CREATE TABLE provisioning_event (
    id                        INTEGER PRIMARY KEY,
    ts                        INTEGER NOT NULL,
    profile_id                TEXT REFERENCES device_profile (id) ON DELETE SET NULL,
    device_id                 TEXT REFERENCES device (id) ON DELETE SET NULL,
    device_name               TEXT,
    strategy                  TEXT,
    outcome                   TEXT NOT NULL CHECK (outcome IN ('SUCCESS', 'NOT_FOUND', 'FAILURE')),
    reason                    TEXT,
    transport                 TEXT,
    remote_address            TEXT
);
CREATE INDEX provisioning_event_by_device ON provisioning_event (device_id, ts);

CREATE TABLE admin_user (
    username                  TEXT PRIMARY KEY CHECK (length(trim(username)) > 0),
    created_time              INTEGER NOT NULL,
    -- scrypt, "scrypt$n$r$p$salt_b64$hash_b64"
    password_hash             TEXT NOT NULL
);

-- Backend applications that consume device data on gatehouse/devices/# (migration 0002).
CREATE TABLE application_account (
    name                      TEXT PRIMARY KEY CHECK (length(trim(name)) > 0),
    created_time              INTEGER NOT NULL,
    username                  TEXT NOT NULL UNIQUE,
    password_digest           BLOB NOT NULL
);

-- A counter that changes whenever a device's credentials change or go away, or a device is
-- changed or deleted, by any process (migration 0003): a process that caches logins (the
-- sidecar) compares it instead of looking every request's credentials up again.
CREATE TABLE credentials_generation (
    id                        INTEGER PRIMARY KEY CHECK (id = 1),
    value                     INTEGER NOT NULL
);
INSERT INTO credentials_generation (id, value) VALUES (1, 0);
CREATE TRIGGER credentials_updated AFTER UPDATE ON device_credentials
BEGIN UPDATE credentials_generation SET value = value + 1; END;
CREATE TRIGGER credentials_deleted AFTER DELETE ON device_credentials
BEGIN UPDATE credentials_generation SET value = value + 1; END;
CREATE TRIGGER device_updated AFTER UPDATE ON device
BEGIN UPDATE credentials_generation SET value = value + 1; END;
CREATE TRIGGER device_deleted AFTER DELETE ON device
BEGIN UPDATE credentials_generation SET value = value + 1; END;

-- Who runs a periodic job that must run in one process only, when several share the database
-- (migration 0006): a process holds a task until `expires_ms`, renewing it while it runs.
CREATE TABLE maintenance_lease (
    task                      TEXT PRIMARY KEY,
    holder                    TEXT NOT NULL,
    expires_ms                INTEGER NOT NULL
);
-- Audit retention deletes by age.
CREATE INDEX provisioning_event_by_ts ON provisioning_event (ts);

-- What the server key opens (gatehouse/server_key.py's check value, sealed; migration 0007): a
-- process whose key cannot open it, another deployment's key, refuses to start before it serves
-- anyone, instead of finding no device's credentials.
CREATE TABLE server_key_check (
    id                        INTEGER PRIMARY KEY CHECK (id = 1),
    sealed_check              BLOB NOT NULL
);
