# syntax=docker/dockerfile:1.7
#
# linktoken-operator image: a Rust builder stage, then distroless/cc as the runtime (glibc, CA
# certificates, tzdata, /etc/passwd with the nonroot user; no shell, no package manager).
#
#   docker build -t linktoken-operator:dev .
#
# scripts/build-image.sh builds the same layout without a container daemon or registry (a static
# binary on an empty base); keep the path, user, ports and entrypoint of both in step.
#
# Both stages are Debian 12 (bookworm), so the binary links against the same glibc it runs on.
# Pin the base images by digest in release pipelines (e.g. with Renovate).

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Only what the build reads: the manifest, the lockfile and the sources (.dockerignore keeps
# target/, tests and docs out of the context).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The harness crates: cargo reads every workspace member's manifest, but -p below compiles
# the operator package alone (none of the harness is in the image).
COPY crates ./crates
# Cache mounts keep the crate registry and the target folder between builds, so a change in
# src/ recompiles the crate, not its dependencies. --locked: exactly the versions in Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p linktoken-operator --bin linktoken-operator \
 && install -D -m 0755 target/release/linktoken-operator /out/linktoken-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="linktoken-operator" \
      org.opencontainers.image.description="Turns LinkToken resources into MongoDB Atlas live-migration link tokens" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/linktoken-operator/linktoken-operator"
COPY --from=build /out/linktoken-operator /usr/local/bin/linktoken-operator
# 65532 is distroless' "nonroot". Numeric, so that runAsNonRoot can verify it without reading
# /etc/passwd; the chart's securityContext uses the same IDs.
USER 65532:65532
# Metrics and probes (the chart's defaults).
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/linktoken-operator"]
