# syntax=docker/dockerfile:1
#
# ghcr.io/kiln-dev/maven-build:0.1.0-maven3.9-jdk17 — the `compile` container of
# job-templates/maven.yaml. Tagged <Kiln version>-maven<Maven>-jdk<JDK>: it carries this Kiln's
# `kiln` binary, so it is rebuilt and retagged with every Kiln release.
#
# Kiln runs, in $(WORKSPACE)/src:
#   kiln step exec --clone-info $(WORKSPACE)/.kiln/clone.json \
#        --commit-time-arg -Dproject.build.outputTimestamp= -- mvn -B <maven_args> <goals>
# so both `kiln` and `mvn` must be on PATH. Env per build: MAVEN_OPTS=-Xmx512m and
# HOME=$(CACHE)/home, i.e. ~/.m2 lives on the per-tenant cache volume (/cache). The root
# filesystem is read-only and /tmp is an emptyDir (java.io.tmpdir, hsperfdata).
#
#   docker buildx build -f build-images/maven-build.Dockerfile -t ghcr.io/kiln-dev/maven-build:0.1.0-maven3.9-jdk17 .

ARG KILN_TOOLS_IMAGE=ghcr.io/kiln-dev/kiln-tools:0.1.0
ARG MAVEN_IMAGE=maven:3.9-eclipse-temurin-17

FROM ${KILN_TOOLS_IMAGE} AS kiln-tools

FROM ${MAVEN_IMAGE}
COPY --from=kiln-tools /usr/local/bin/kiln /usr/local/bin/kiln
# The local repository follows $HOME, whatever user.home the JVM derives: uid 65532 has no passwd
# entry, and a global settings file pins ~/.m2/repository to the HOME Kiln sets ($(CACHE)/home).
# `-Dmaven.repo.local=…` in `toolchains.maven_args` still overrides it.
COPY <<'XML' /usr/share/maven/conf/settings.xml
<?xml version="1.0" encoding="UTF-8"?>
<!-- Kiln build image: the local repository lives under $HOME (the per-tenant cache). -->
<settings xmlns="http://maven.apache.org/SETTINGS/1.2.0"
          xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
          xsi:schemaLocation="http://maven.apache.org/SETTINGS/1.2.0 https://maven.apache.org/xsd/settings-1.2.0.xsd">
  <localRepository>${env.HOME}/.m2/repository</localRepository>
</settings>
XML
# The base image points MAVEN_CONFIG at /root/.m2 (for its root-only entrypoint, which Kiln does
# not run); mvnw passes MAVEN_CONFIG as arguments, so clear it.
ENV MAVEN_CONFIG=""
# The runAsUser/runAsGroup of job-templates/maven.yaml; deliberately no passwd entry (see above).
USER 65532:65532
WORKDIR /workspace
# Kiln replaces the entrypoint with the step's argv (`command`); the base entrypoint writes to
# /root and would fail as 65532 on a read-only root filesystem anyway.
ENTRYPOINT []
CMD ["mvn", "--version"]
