# syntax=docker/dockerfile:1
#
# ghcr.io/kiln-dev/go-build:1.22 — the `compile` container of job-templates/go.yaml.
#
# Kiln runs `go build -trimpath … -o $(WORKSPACE)/out/app -- <package>` in $(WORKSPACE)/src with
# CGO_ENABLED=0, GOPROXY, GOFLAGS=-mod=mod and GOCACHE/GOMODCACHE/GOPATH under $(CACHE) (the
# per-tenant cache volume at /cache), HOME=$(WORKSPACE)/home. The root filesystem is read-only and
# /tmp is an emptyDir, so nothing here may need to write outside those.
#
#   docker buildx build -f build-images/go-build.Dockerfile -t ghcr.io/kiln-dev/go-build:1.22 .
#
# KILN_TOOLS_IMAGE: where `kiln` comes from (build kiln-tools.Dockerfile first when you push to
# your own registry, and pass --build-arg KILN_TOOLS_IMAGE=<your registry>/kiln-tools:0.1.0).

ARG KILN_TOOLS_IMAGE=ghcr.io/kiln-dev/kiln-tools:0.1.0
ARG GO_IMAGE=golang:1.22

FROM ${KILN_TOOLS_IMAGE} AS kiln-tools

FROM ${GO_IMAGE}
# `kiln` on PATH (static binary); go is already on PATH at /usr/local/go/bin.
COPY --from=kiln-tools /usr/local/bin/kiln /usr/local/bin/kiln
# Never download another toolchain behind the operator's back: this image is Go 1.22.
ENV GOTOOLCHAIN=local
# Defaults for running the image by hand; Kiln sets all of them per build.
ENV GOCACHE=/cache/go-build GOMODCACHE=/cache/go-mod GOPATH=/cache/go CGO_ENABLED=0
# The runAsUser/runAsGroup of job-templates/go.yaml (distroless "nonroot"); no passwd entry needed.
USER 65532:65532
WORKDIR /workspace
# Kiln replaces the entrypoint with the step's argv (`command`).
ENTRYPOINT []
CMD ["go", "version"]
