# syntax=docker/dockerfile:1
# The image ghcr.io/ringway-dev/ringway-operator: the operator (charts/ringway runs it as its Deployment).
# Build from the repository's root:
#
#   docker build -f docker/ringway-operator.Dockerfile -t ghcr.io/ringway-dev/ringway-operator:0.1.0 .
#
# The binary is the workspace's release build (LTO, one codegen unit); the
# runtime image is distroless (glibc, CA certificates, no shell) and runs
# as user 65532, the user the chart and the operator's pod template run it
# as. charts/check.py checks these facts against the chart and the code.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ringway-operator --bin ringway-operator \
 && cp target/release/ringway-operator /ringway-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ringway-operator /usr/local/bin/ringway-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ringway-operator"]
