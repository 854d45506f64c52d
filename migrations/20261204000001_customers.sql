-- Customers and their payment sources.
--
-- Every key starts with (account_id, live_mode): the owner of the row. That
-- is the distribution key should the tables ever be sharded by account, and
-- every query of the service filters on it.

CREATE TABLE customers (
    account_id        text        NOT NULL,
    live_mode         boolean     NOT NULL,
    id                text        NOT NULL,
    email             text,
    -- email in lower case (Unicode rules, computed by the service) for the
    -- case-insensitive filter; independent of the database's locale.
    email_folded      text,
    shipping          jsonb       NOT NULL DEFAULT '{}',
    default_source_id text,
    tax_identifiers   jsonb       NOT NULL DEFAULT '[]',
    locale            text,
    customer_type     smallint    NOT NULL,
    enabled           boolean     NOT NULL,
    forgotten         boolean     NOT NULL DEFAULT false,
    metadata          jsonb       NOT NULL DEFAULT '{}',
    create_time       timestamptz NOT NULL,
    update_time       timestamptz NOT NULL,
    etag              text        NOT NULL,
    CONSTRAINT customers_pkey PRIMARY KEY (account_id, live_mode, id)
);

-- Listing is newest first with (create_time, id) as the keyset.
CREATE INDEX customers_by_create_time
    ON customers (account_id, live_mode, create_time DESC, id DESC);

-- The email filter compares case-insensitively, through email_folded.
CREATE INDEX customers_by_email
    ON customers (account_id, live_mode, email_folded, create_time DESC, id DESC)
    WHERE email_folded IS NOT NULL;

CREATE TABLE customer_sources (
    account_id  text        NOT NULL,
    live_mode   boolean     NOT NULL,
    customer_id text        NOT NULL,
    source_id   text        NOT NULL,
    attach_time timestamptz NOT NULL,
    CONSTRAINT customer_sources_pkey PRIMARY KEY (account_id, live_mode, customer_id, source_id),
    CONSTRAINT customer_sources_customer_fkey FOREIGN KEY (account_id, live_mode, customer_id)
        REFERENCES customers (account_id, live_mode, id) ON DELETE CASCADE
);
