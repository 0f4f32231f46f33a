# syntax=docker/dockerfile:1
#
# ghcr.io/kiln-dev/go-build:0.1.0-go1.27 — the `compile` container of job-templates/go.yaml.
#
# Tagged <Kiln version>-go<Go release>: the image carries this Kiln's `kiln` binary, so it is
# rebuilt and retagged with every Kiln release, and the Go release says which toolchain it has.
#
# Go 1.27 (released August 2026): Go supports the two newest major releases, so 1.27 gets
# security fixes until Go 1.29 ships (about August 2027); 1.22 to 1.25 are past their end of life
# by December 2026. `golang:1.27` follows the newest 1.27.x patch release: rebuild to pick up
# fixes, and move to the next release before 1.27's support ends.
#
# Kiln runs `go build -trimpath … -o $(WORKSPACE)/out/app -- <package>` in $(WORKSPACE)/src with
# CGO_ENABLED=0, GOPROXY, GOFLAGS=-mod=mod and GOCACHE/GOMODCACHE/GOPATH under $(CACHE) (the
# per-tenant cache volume at /cache), HOME=$(WORKSPACE)/home. The root filesystem is read-only and
# /tmp is an emptyDir, so nothing here may need to write outside those.
#
#   docker buildx build -f build-images/go-build.Dockerfile -t ghcr.io/kiln-dev/go-build:0.1.0-go1.27 .
#
# KILN_TOOLS_IMAGE: where `kiln` comes from (build kiln-tools.Dockerfile first when you push to
# your own registry, and pass --build-arg KILN_TOOLS_IMAGE=<your registry>/kiln-tools:0.1.0).

ARG KILN_TOOLS_IMAGE=ghcr.io/kiln-dev/kiln-tools:0.1.0
ARG GO_IMAGE=golang:1.27

FROM ${KILN_TOOLS_IMAGE} AS kiln-tools

FROM ${GO_IMAGE}
# `kiln` on PATH (static binary); go is already on PATH at /usr/local/go/bin.
COPY --from=kiln-tools /usr/local/bin/kiln /usr/local/bin/kiln
# Never download another toolchain behind the operator's back: this image is Go 1.27 (a module
# whose go.mod asks for a newer Go fails to build rather than fetching one).
ENV GOTOOLCHAIN=local
# Defaults for running the image by hand; Kiln sets all of them per build.
ENV GOCACHE=/cache/go-build GOMODCACHE=/cache/go-mod GOPATH=/cache/go CGO_ENABLED=0
# The runAsUser/runAsGroup of job-templates/go.yaml (distroless "nonroot"); no passwd entry needed.
USER 65532:65532
WORKDIR /workspace
# Kiln replaces the entrypoint with the step's argv (`command`).
ENTRYPOINT []
CMD ["go", "version"]
