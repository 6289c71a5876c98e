# syntax=docker/dockerfile:1
# Build:  docker build -t switchboard:0.1.0 .
# The image runs as an unprivileged user on a slim base with a read-only
# root filesystem in mind (it writes nothing to disk).

FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p switchboard-gateway \
 && cp target/release/switchboard /switchboard

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 switchboard \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin switchboard
COPY --from=build /switchboard /usr/local/bin/switchboard
COPY config/switchboard.toml /etc/switchboard/switchboard.toml
# The file listens on loopback; in a container, listen on every interface.
ENV SWITCHBOARD__HTTP__LISTEN=0.0.0.0:8080
USER 10001:10001
EXPOSE 8080 7100
ENTRYPOINT ["/usr/local/bin/switchboard"]
CMD ["--config", "/etc/switchboard/switchboard.toml"]
