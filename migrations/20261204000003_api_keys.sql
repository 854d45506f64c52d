-- API keys. A key acts for one account in one mode (live or test).
--
-- Only a SHA-256 hash of the key's secret part is stored; the id is the
-- public part that the key text carries, used to find the row. This table
-- is small and read on every call (through a short cache), so it stays
-- unsharded should the customer tables ever be distributed by account.

CREATE TABLE api_keys (
    id          text        NOT NULL,
    account_id  text        NOT NULL,
    live_mode   boolean     NOT NULL,
    secret_hash bytea       NOT NULL,
    create_time timestamptz NOT NULL,
    revoke_time timestamptz,
    CONSTRAINT api_keys_pkey PRIMARY KEY (id)
);
