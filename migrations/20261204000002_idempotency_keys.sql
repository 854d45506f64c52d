-- Results of CreateCustomer calls that carried a request_id, kept for 24
-- hours so that a retry returns the customer the first call created.
--
-- No personal data: the customer is referenced by id, and the request by a
-- salted SHA-256 fingerprint, which erasure sets to NULL as well.

CREATE TABLE idempotency_keys (
    account_id  text        NOT NULL,
    live_mode   boolean     NOT NULL,
    request_id  text        NOT NULL,
    fingerprint bytea,
    customer_id text        NOT NULL,
    create_time timestamptz NOT NULL,
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (account_id, live_mode, request_id)
);

-- The periodic cleanup deletes by age.
CREATE INDEX idempotency_keys_by_create_time ON idempotency_keys (create_time);

-- Erasure finds a customer's records by customer id.
CREATE INDEX idempotency_keys_by_customer
    ON idempotency_keys (account_id, live_mode, customer_id);
