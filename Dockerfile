# syntax=docker/dockerfile:1
# The one hookline image: receiver, dispatcher and operator are the same image run with
# another command (`hookline receiver|dispatcher|operator`; see helm/hookline).
#
#   docker build -t ghcr.io/hookline/hookline:0.1.0 .
#
# Stage 1 installs hookline and its dependencies into a virtualenv (every dependency
# ships wheels, so no compiler is needed even here); stage 2 is a clean slim Python with
# that virtualenv and an unprivileged user, and nothing else: no pip, no build tools.
#
# BASE_IMAGE is the Python both stages start from: the official slim image by default.
# `make image` (tools/image.sh) builds without any registry: it passes a Debian bookworm
# base made with mmdebstrap (--build-arg BASE_IMAGE=localhost/hookline-base:bookworm) and
# a CA bundle for pip as the build secret `pipca`, which reaches the pip step only.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python3 -m venv /opt/hookline
COPY pyproject.toml ./
COPY src/ src/
# Bytecode is compiled here: the root filesystem is read-only at run time. A CA bundle
# given as the build secret `pipca` (a TLS-intercepting proxy's) is used by this step only
# and is never written to a layer; without it pip uses its own.
RUN --mount=type=secret,id=pipca \
    if [ -f /run/secrets/pipca ]; then export PIP_CERT=/run/secrets/pipca; fi \
 && /opt/hookline/bin/pip install --compile . \
 && /opt/hookline/bin/pip uninstall --yes pip setuptools \
 && /opt/hookline/bin/hookline --help > /dev/null

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="hookline" \
      org.opencontainers.image.description="A Kubernetes-native webhook relay" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid, so Kubernetes can check runAsNonRoot without a user lookup.
RUN groupadd --system --gid 10001 hookline \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin hookline
COPY --from=build /opt/hookline /opt/hookline
ENV PATH=/opt/hookline/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOOKLINE_BODY_DIR=/tmp/hookline/bodies
# The only writable place in the pods is an emptyDir on /tmp.
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080 8081 8082
ENTRYPOINT ["hookline"]
CMD ["--help"]
