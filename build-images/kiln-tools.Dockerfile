# syntax=docker/dockerfile:1
#
# ghcr.io/kiln-dev/kiln-tools:0.1.0 — the `kiln` binary on distroless.
#
# One image, two uses:
#   - the Kiln service itself (deploy/base/deployment.yaml runs `kiln serve --config /etc/kiln/kiln.toml`);
#   - the `clone` init container of every Job template and the `image` container of the Go and
#     Maven templates (`kiln step clone`, `kiln step assemble`; job-templates/*.yaml).
#
# Build from the repository root (the build needs the whole workspace, job-templates/ included:
# the binary embeds the templates as its built-in default):
#
#   docker buildx build -f build-images/kiln-tools.Dockerfile -t ghcr.io/kiln-dev/kiln-tools:0.1.0 .
#
# The binary is static (musl): it runs unchanged in distroless here and is copied into the Go,
# Maven and BuildKit build images, whatever their libc.

ARG RUST_IMAGE=rust:1-alpine

FROM ${RUST_IMAGE} AS build
# ring and SQLite (bundled by sqlx) compile C; musl-dev gives the static C runtime.
RUN apk add --no-cache musl-dev gcc
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY builder-api builder-api
COPY registry-sync registry-sync
COPY job-templates job-templates
# builder-api declares its integration test target at ../tests; cargo wants the file to exist.
COPY tests tests
# On Alpine the host target is x86_64/aarch64-unknown-linux-musl; crt-static makes it explicit
# (the check after the build fails if the binary still links anything dynamically).
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p builder-api --bin kiln \
 && install -D -m 0755 target/release/kiln /out/kiln \
 && if ldd /out/kiln 2>&1 | grep -q '=>'; then echo "kiln is not a static binary" >&2; exit 1; fi

# distroless/static: no shell, no package manager; CA certificates (/etc/ssl/certs) and tzdata are
# part of the base, which is what the registry and git clients (rustls with the platform's roots)
# need. User nonroot = uid/gid 65532, the runAsUser of the Go and Maven templates.
FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/kiln /usr/local/bin/kiln
USER 65532:65532
# The templates mount the build workspace here; the service does not use it.
WORKDIR /workspace
ENTRYPOINT ["/usr/local/bin/kiln"]
CMD ["serve"]
