# The SMS gateway's image: built in a full Rust image, run from a small one with nothing in it
# but the C runtime, the binary and the migrations, as a user that is not root. docs/deploy.md
# says how to run it; crates/sms-gateway/tests/deploy.rs checks what this file promises (the
# health check, the defaults, the files it copies) against the binary.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sms-gateway \
 && install -D target/release/sms-gateway /out/sms-gateway \
 && install -d -o 65532 -g 65532 /out/data

# Distroless: glibc and libgcc (the binary's only dynamic dependencies: TLS is rustls, SQLite is
# compiled in), CA certificates and time zones; no shell and no package manager. Its `nonroot`
# user is 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sms-gateway /usr/local/bin/sms-gateway
# The schema as the Supabase CLI applies it (`supabase db push`); the binary embeds the same
# files for `sms-gateway migrate` and needs none of them at run time.
COPY migrations /usr/share/sms-gateway/migrations
# The SQLite store's directory, the one place the gateway writes: mount a volume here.
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
WORKDIR /data
ENV BIND=0.0.0.0 \
    PORT=8080 \
    DATABASE_URL=sqlite:///data/soul.db \
    LOG_FORMAT=json
EXPOSE 8080
VOLUME ["/data"]
# The gateway asks itself: the image has no curl. Unhealthy after three failed checks; the
# first 20 s (migrations at start) do not count.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/sms-gateway", "health"]
# SIGTERM drains within SHUTDOWN_TIMEOUT (20 s): give `docker stop` more (`--time 30`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sms-gateway"]
CMD ["serve"]
