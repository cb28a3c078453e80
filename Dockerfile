# syntax=docker/dockerfile:1
# slo-hub: build with cargo, run on Debian slim as an unprivileged user.
#   docker build -t slo-hub .
#   docker run -p 8080:8080 -v slo-hub-data:/var/lib/slo-hub \
#     -v ./slo-hub.toml:/etc/slo-hub/slo-hub.toml:ro slo-hub

FROM rust:1.90-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY static ./static
COPY demo-spas ./demo-spas
RUN cargo build --release --locked --bin slo-hub \
    && strip target/release/slo-hub

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/slo-hub --shell /usr/sbin/nologin slo-hub \
    && mkdir -p /var/lib/slo-hub /etc/slo-hub \
    && chown slo-hub:slo-hub /var/lib/slo-hub
COPY --from=build /src/target/release/slo-hub /usr/local/bin/slo-hub
USER 10001
ENV SLO_HUB_DATA_DIR=/var/lib/slo-hub
VOLUME ["/var/lib/slo-hub"]
EXPOSE 8080
# Ready = issuer keys loaded, store (and Redis, in a cluster) reachable.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/slo-hub"]
CMD ["serve", "--config", "/etc/slo-hub/slo-hub.toml"]
