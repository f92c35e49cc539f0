# The policy server alone (the `server` extra: onnxruntime on CPU, grpcio, pydantic,
# prometheus-client). No torch, no gyms; runs as an unprivileged user on a read-only root.
#   docker build -f docker/server.Dockerfile -t ghcr.io/safepolicy/server:0.1.0 .
# Pin the base by digest for releases: docker buildx imagetools inspect python:3.11.7-slim-bookworm
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY safepolicy/ safepolicy/
COPY training/ training/
COPY export/ export/
COPY server/ server/
COPY audit/ audit/
COPY docker/install-server.sh docker/
RUN PYTHON=python3 sh docker/install-server.sh /opt/safepolicy cpu

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="safepolicy-server" \
      org.opencontainers.image.description="safepolicy gRPC policy server (CPU)"
RUN groupadd --gid 10001 safepolicy \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin safepolicy
COPY --from=build /opt/safepolicy /opt/safepolicy
ENV PATH=/opt/safepolicy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SAFEPOLICY_SERVER_REPO=/models
USER 10001:10001
EXPOSE 50051 9464
ENTRYPOINT ["safepolicy"]
CMD ["serve"]
