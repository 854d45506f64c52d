# syntax=docker/dockerfile:1

# Image of the customer service. It needs an external PostgreSQL, given at run
# time as DATABASE_URL (e.g. postgres://user:password@host:5432/customers);
# see compose.yaml for a local setup.

# ---- build ------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Queries are never checked against a live database while building.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

COPY . .

# The cache mounts keep the downloaded crates and the compiled dependencies
# between builds, so a change to the service recompiles only the service.
# The target directory is a cache mount, so the binary is copied out of it
# in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin customer-service \
    && install -D -s -m 0755 target/release/customer-service /out/customer-service

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 customers \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin customers

COPY --from=builder /out/customer-service /usr/local/bin/customer-service

# Listen on every interface inside the container; DATABASE_URL is supplied
# when the container runs.
ENV LISTEN_ADDR=0.0.0.0:50051

USER 10001
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/customer-service"]
CMD ["serve"]
