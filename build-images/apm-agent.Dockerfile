# syntax=docker/dockerfile:1
#
# ghcr.io/kiln-dev/apm-agent:elastic-<version> — an APM agent, as an image Kiln takes one layer from.
#
# Layout (the contract with the APM injection, a later issue):
#   /opt/apm/<agent>/<files>      e.g. /opt/apm/elastic/elastic-apm-agent.jar
# and nothing else: FROM scratch, one layer, files 0644 and directories 0755 owned by root, so the
# layer can be appended as is to any Java image built by Kiln (assembled, Maven or Dockerfile) and
# read by any runAsUser. The app then gets JAVA_TOOL_OPTIONS=-javaagent:/opt/apm/elastic/elastic-apm-agent.jar.
# A new agent version is a new tag of this image; apps are never rebuilt for it.
#
#   docker buildx build -f build-images/apm-agent.Dockerfile \
#     --build-arg AGENT_VERSION=1.50.0 -t ghcr.io/kiln-dev/apm-agent:elastic-1.50.0 .
#
# Another agent follows the same pattern under its own directory, e.g. /opt/apm/otel/opentelemetry-javaagent.jar.

ARG AGENT_VERSION=1.50.0
ARG FETCH_IMAGE=alpine:3

FROM ${FETCH_IMAGE} AS fetch
ARG AGENT_VERSION
ARG MAVEN_REPO=https://repo1.maven.org/maven2
WORKDIR /fetch
# From Maven Central, checked against the published SHA-1 (a truncated or corrupted download fails).
RUN set -eu; \
    base="${MAVEN_REPO}/co/elastic/apm/elastic-apm-agent/${AGENT_VERSION}/elastic-apm-agent-${AGENT_VERSION}.jar"; \
    wget -q -O elastic-apm-agent.jar "$base"; \
    echo "$(wget -q -O - "$base.sha1" | cut -c1-40)  elastic-apm-agent.jar" | sha1sum -c -; \
    install -d -m 0755 /out/opt/apm/elastic; \
    install -m 0644 elastic-apm-agent.jar /out/opt/apm/elastic/elastic-apm-agent.jar

FROM scratch
ARG AGENT_VERSION
COPY --from=fetch /out/ /
LABEL org.opencontainers.image.title="Elastic APM Java agent for Kiln" \
      org.opencontainers.image.version="${AGENT_VERSION}" \
      dev.kiln.apm.agent="elastic" \
      dev.kiln.apm.path="/opt/apm/elastic/elastic-apm-agent.jar"
