# Multi-stage build: compile in the Rust image, run in a slim Debian image as an unprivileged
# user. The build step is the README's build command.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /srv/tagway --shell /usr/sbin/nologin tagway \
 && mkdir -p /srv/tagway/rules /srv/tagway/certs /srv/tagway/spool \
 && chown -R tagway:tagway /srv/tagway
COPY --from=build /src/target/release/tagway /usr/local/bin/tagway
COPY --chown=tagway:tagway rules /srv/tagway/rules
WORKDIR /srv/tagway
USER tagway
# Inside a container, listen on every interface; the published ports decide what is exposed.
ENV TAGWAY_LISTEN=0.0.0.0:8080 \
    TAGWAY_TLS_LISTEN=0.0.0.0:8443 \
    TAGWAY_ADMIN_LISTEN=0.0.0.0:9901
EXPOSE 8080 8443 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["tagway"]
CMD ["serve"]
