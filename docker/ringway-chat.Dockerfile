# syntax=docker/dockerfile:1
# The image ghcr.io/ringway-dev/ringway-chat: the chat demo backend of examples/chat-gateway.yaml (serves the demo page).
# Build from the repository's root:
#
#   docker build -f docker/ringway-chat.Dockerfile -t ghcr.io/ringway-dev/ringway-chat:0.1.0 .
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
    cargo build --release --locked -p ringway-e2e --bin ringway-chat \
 && cp target/release/ringway-chat /ringway-chat

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ringway-chat /usr/local/bin/ringway-chat
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ringway-chat"]
