# syntax=docker/dockerfile:1
#
# flex-auth container image: a static-enough release build on Debian bookworm, run on distroless
# (glibc + libgcc only, no shell) as the numeric non-root user 65532. Nothing is written to the
# root file system at run time, so it runs with readOnlyRootFilesystem; a decision log or an
# installed registry needs a mounted volume.
#
#   docker build -t flex-auth:dev .
#   docker run --rm -p 8080:8080 flex-auth:dev            # the shipped ops-warden example
#   curl -s localhost:8080/readyz
#
# Kubernetes probes do the health checking (GET /healthz, /readyz), so there is no HEALTHCHECK.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Only what the release binary needs; Cargo.lock pins every dependency (--locked).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin flex-auth \
 && install -D -m 0755 target/release/flex-auth /out/usr/local/bin/flex-auth
# The shipped example, so that the image answers decisions out of the box; Kubernetes mounts
# ConfigMaps over these directories.
COPY policies/ops-warden/policy_package.md /out/etc/flex-auth/policy/policy_package.md
COPY registry/ops-warden/production_registry_snapshot.json /out/etc/flex-auth/registry/registry.json

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /
USER 65532:65532
ENV FLEX_AUTH_POLICY=/etc/flex-auth/policy \
    FLEX_AUTH_REGISTRY=/etc/flex-auth/registry/registry.json \
    FLEX_AUTH_LISTEN=0.0.0.0:8080 \
    FLEX_AUTH_MODE=production
# 8080: decision API (/v1/check, probes, /metrics); 8081: reverse proxy (--upstream);
# 9901: admin API (only with --admin-token-file; listens on 127.0.0.1 unless FLEX_AUTH_ADMIN_LISTEN says otherwise).
EXPOSE 8080 8081 9901
ENTRYPOINT ["/usr/local/bin/flex-auth"]
CMD ["serve"]
