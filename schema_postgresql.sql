-- Gatehouse database schema on PostgreSQL: schema.sql's tables, in PostgreSQL's types.
--
-- schema.sql is the reference for what every table and column means; this file says the same in
-- PostgreSQL's dialect, table for table, column for column, constraint for constraint, so that
-- rows move between the two stores unchanged (`gatehouse db copy`). tests/test_schema_parity.py
-- compares the two on live databases: the same tables, columns in the same order, nullability,
-- primary keys, unique and foreign keys with their ON DELETE rules. A schema change is an edit of
-- both files and a migration for each store.
--
-- Applied once by the migration "0001_initial" (gatehouse/storage/postgresql_migrations.py),
-- recorded in gatehouse_migrations. Dialect differences, each on purpose:
-- - BLOB is BYTEA. Attribute and telemetry values, which SQLite keeps as bound (no affinity), are
--   BYTEA here holding the value's text (gatehouse/storage/postgresql.py encodes and decodes it
--   by `kind`): one column like SQLite's, and text with NUL characters survives.
-- - Times and counters are BIGINT, booleans stay 0/1 INTEGER columns as in SQLite.
-- - json_valid() is a small function of the same name, so the CHECK reads as in schema.sql.
-- - Triggers are functions; the credentials generation and the change notification
--   (NOTIFY gatehouse_changes) run once per statement.

CREATE FUNCTION json_valid(document TEXT) RETURNS BOOLEAN LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM document::json;
    RETURN TRUE;
EXCEPTION WHEN others THEN
    RETURN FALSE;
END $$;

CREATE TABLE device_profile (
    id                        TEXT PRIMARY KEY,
    created_time              BIGINT NOT NULL,
    name                      TEXT NOT NULL UNIQUE CHECK (length(trim(name)) > 0),
    description               TEXT,
    is_default                INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    provision_type            TEXT NOT NULL DEFAULT 'DISABLED' CHECK (provision_type IN (
                                  'DISABLED', 'ALLOW_CREATE_NEW_DEVICES',
                                  'CHECK_PRE_PROVISIONED_DEVICES', 'X509_CERTIFICATE_CHAIN')),
    provision_device_key      TEXT UNIQUE,
    sealed_provision_secret   BYTEA,
    ca_certificate_pem        TEXT,
    certificate_regex         TEXT,
    allow_create_by_x509      INTEGER CHECK (allow_create_by_x509 IN (0, 1)),
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
CREATE UNIQUE INDEX device_profile_one_default ON device_profile (is_default) WHERE is_default = 1;

CREATE TABLE device (
    id                        TEXT PRIMARY KEY,
    created_time              BIGINT NOT NULL,
    name                      TEXT NOT NULL UNIQUE CHECK (length(trim(name)) BETWEEN 1 AND 255),
    profile_id                TEXT NOT NULL REFERENCES device_profile (id),
    label                     TEXT,
    additional_info           TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(additional_info))
);
CREATE INDEX device_by_profile ON device (profile_id);

CREATE TABLE device_credentials (
    id                        TEXT PRIMARY KEY,
    created_time              BIGINT NOT NULL,
    device_id                 TEXT NOT NULL UNIQUE REFERENCES device (id) ON DELETE CASCADE,
    credentials_type          TEXT NOT NULL CHECK (credentials_type IN (
                                  'ACCESS_TOKEN', 'MQTT_BASIC', 'X509_CERTIFICATE')),
    lookup_digest             BYTEA NOT NULL UNIQUE,
    public_credentials_id     TEXT,
    sealed_value              BYTEA,
    client_id_digest          BYTEA,
    user_name_digest          BYTEA,
    password_digest           BYTEA,
    certificate               TEXT,
    version                   BIGINT NOT NULL DEFAULT 1,
    CHECK (credentials_type <> 'ACCESS_TOKEN' OR sealed_value IS NOT NULL),
    CHECK (credentials_type <> 'MQTT_BASIC' OR sealed_value IS NOT NULL),
    CHECK (credentials_type <> 'X509_CERTIFICATE' OR certificate IS NOT NULL)
);
-- The TLS listener's trust anchors: every X.509 device certificate (ChangeWatch.new_trust_anchors).
CREATE INDEX device_credentials_by_public_id ON device_credentials (public_credentials_id);

CREATE TABLE attribute (
    device_id                 TEXT NOT NULL REFERENCES device (id) ON DELETE CASCADE,
    scope                     TEXT NOT NULL CHECK (scope IN ('CLIENT_SCOPE', 'SHARED_SCOPE', 'SERVER_SCOPE')),
    key                       TEXT NOT NULL,
    kind                      TEXT NOT NULL CHECK (kind IN ('BOOLEAN', 'LONG', 'DOUBLE', 'STRING', 'JSON')),
    value                     BYTEA,
    last_update_ts            BIGINT NOT NULL,
    PRIMARY KEY (device_id, scope, key)
);

CREATE TABLE telemetry_latest (
    device_id                 TEXT NOT NULL REFERENCES device (id) ON DELETE CASCADE,
    key                       TEXT NOT NULL,
    ts                        BIGINT NOT NULL,
    kind                      TEXT NOT NULL CHECK (kind IN ('BOOLEAN', 'LONG', 'DOUBLE', 'STRING', 'JSON')),
    value                     BYTEA,
    PRIMARY KEY (device_id, key)
);

CREATE TABLE telemetry_history (
    device_id                 TEXT NOT NULL REFERENCES device (id) ON DELETE CASCADE,
    key                       TEXT NOT NULL,
    ts                        BIGINT NOT NULL,
    kind                      TEXT NOT NULL CHECK (kind IN ('BOOLEAN', 'LONG', 'DOUBLE', 'STRING', 'JSON')),
    value                     BYTEA,
    PRIMARY KEY (device_id, key, ts)
);
CREATE INDEX telemetry_history_by_ts ON telemetry_history (ts);

CREATE TABLE provisioning_event (
    id                        BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    ts                        BIGINT NOT NULL,
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
CREATE INDEX provisioning_event_by_ts ON provisioning_event (ts);

CREATE TABLE admin_user (
    username                  TEXT PRIMARY KEY CHECK (length(trim(username)) > 0),
    created_time              BIGINT NOT NULL,
    password_hash             TEXT NOT NULL
);

CREATE TABLE application_account (
    name                      TEXT PRIMARY KEY CHECK (length(trim(name)) > 0),
    created_time              BIGINT NOT NULL,
    username                  TEXT NOT NULL UNIQUE,
    password_digest           BYTEA NOT NULL
);

CREATE TABLE credentials_generation (
    id                        INTEGER PRIMARY KEY CHECK (id = 1),
    value                     BIGINT NOT NULL
);
INSERT INTO credentials_generation (id, value) VALUES (1, 0);

CREATE FUNCTION credentials_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE credentials_generation SET value = value + 1;
    RETURN NULL;
END $$;
CREATE TRIGGER credentials_changed AFTER UPDATE OR DELETE ON device_credentials
    FOR EACH STATEMENT EXECUTE FUNCTION credentials_changed();
CREATE TRIGGER device_changed AFTER UPDATE OR DELETE ON device
    FOR EACH STATEMENT EXECUTE FUNCTION credentials_changed();

-- What long-running processes on any machine must hear about (SQLite's data_version, which every
-- commit moves, polled): credentials, devices, profiles and their trust anchors. Delivered to
-- listeners when the transaction commits, once per transaction (PostgreSQL folds equal
-- notifications), never for device data.
CREATE FUNCTION notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gatehouse_changes', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER device_profile_notify AFTER INSERT OR UPDATE OR DELETE ON device_profile
    FOR EACH STATEMENT EXECUTE FUNCTION notify_change();
CREATE TRIGGER device_notify AFTER INSERT OR UPDATE OR DELETE ON device
    FOR EACH STATEMENT EXECUTE FUNCTION notify_change();
CREATE TRIGGER device_credentials_notify AFTER INSERT OR UPDATE OR DELETE ON device_credentials
    FOR EACH STATEMENT EXECUTE FUNCTION notify_change();
CREATE TRIGGER application_account_notify AFTER INSERT OR UPDATE OR DELETE ON application_account
    FOR EACH STATEMENT EXECUTE FUNCTION notify_change();

CREATE TABLE maintenance_lease (
    task                      TEXT PRIMARY KEY,
    holder                    TEXT NOT NULL,
    expires_ms                BIGINT NOT NULL
);

-- What a Gatehouse server key opens (gatehouse/server_key.py's check value, sealed): a process
-- whose key cannot open it refuses to start before it serves anyone.
CREATE TABLE server_key_check (
    id                        INTEGER PRIMARY KEY CHECK (id = 1),
    sealed_check              BYTEA NOT NULL
);
