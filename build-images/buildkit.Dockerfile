# syntax=docker/dockerfile:1
#
# ghcr.io/kiln-dev/buildkit:0.1.0 — the `compile` container of job-templates/dockerfile.yaml.
#
# Rootless BuildKit plus `kiln`. Kiln runs `kiln step buildkit --context $(WORKSPACE)/src
# --file <Dockerfile> --layout $(WORKSPACE)/out/image --created-from …`, which runs
#   buildctl-daemonless.sh build --frontend dockerfile.v0 --local context=… --local dockerfile=…
#     --output type=oci,dest=$(WORKSPACE)/out/image,tar=false[,rewrite-timestamp=true]
# (a buildkitd that lives exactly as long as the step; no daemon outlives the build). This
# container runs the Dockerfile's RUN steps and holds no push credential: the `image` container
# (the tools image, `kiln step push`) pushes the layout. A read-only pull credential for private
# base images, when the tenant has one, reaches buildctl through a docker config file in /tmp
# (DOCKER_CONFIG), never argv. `KILN_BUILDCTL` overrides the buildctl wrapper path.
#
# BUILDKITD_FLAGS (read by buildctl-daemonless.sh, passed to buildkitd):
#   --oci-worker-no-process-sandbox   required in an unprivileged pod: build steps share the
#                                     container's PID namespace instead of getting their own
#                                     (the template sets it as env of the `image` container).
#   Other useful flags: --config <file>, --oci-worker-snapshotter=native (kernels without
#   rootless overlayfs or /dev/fuse), --debug.
#
# The pod must allow what rootless BuildKit needs (job-templates/dockerfile.yaml does): uid/gid
# 1000 (the base image's `user`), seccomp and AppArmor Unconfined and allowPrivilegeEscalation
# left at its default (newuidmap/newgidmap are setuid) — never privileged. The root filesystem is
# writable in that container only (rootlesskit writes under /run/user/1000).
#
#   docker buildx build -f build-images/buildkit.Dockerfile -t ghcr.io/kiln-dev/buildkit:0.1.0 .

ARG KILN_TOOLS_IMAGE=ghcr.io/kiln-dev/kiln-tools:0.1.0
ARG BUILDKIT_IMAGE=moby/buildkit:v0.22.0-rootless

FROM ${KILN_TOOLS_IMAGE} AS kiln-tools

FROM ${BUILDKIT_IMAGE}
# Static binary: runs on the Alpine base as is.
COPY --from=kiln-tools /usr/local/bin/kiln /usr/local/bin/kiln
# Kiln sets HOME=$(WORKSPACE)/home for every step. buildkitd keeps its state in
# $XDG_DATA_HOME/buildkit (else $HOME/.local/share/buildkit); pin it to the path where the template
# mounts the `buildkit-state` volume, so the state never lands in the workspace.
ENV XDG_DATA_HOME=/home/user/.local/share
# The base image already sets XDG_RUNTIME_DIR=/run/user/1000 and BUILDKIT_HOST for that socket.
ENV BUILDKITD_FLAGS=--oci-worker-no-process-sandbox
# The base image's user (uid/gid 1000), matching runAsUser/runAsGroup in dockerfile.yaml.
USER 1000:1000
WORKDIR /workspace
# Kiln replaces the entrypoint (rootlesskit buildkitd) with the step's argv.
ENTRYPOINT []
CMD ["buildctl", "--version"]
