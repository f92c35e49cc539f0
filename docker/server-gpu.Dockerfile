# The policy server on CUDA: the `server-gpu` extra (onnxruntime-gpu 1.31.1 with its CUDA 13
# runtime and cuDNN 9 wheels). The CUDA libraries come as pip wheels, so the base is the same
# slim Python image; the host needs the NVIDIA driver and container toolkit (--gpus all, or
# nvidia.com/gpu on Kubernetes). SAFEPOLICY_SERVER_ONNX_PROVIDERS=auto picks CUDA.
#   docker build -f docker/server-gpu.Dockerfile -t ghcr.io/safepolicy/server-gpu:0.1.0 .
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
RUN PYTHON=python3 sh docker/install-server.sh /opt/safepolicy gpu

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="safepolicy-server-gpu" \
      org.opencontainers.image.description="safepolicy gRPC policy server (onnxruntime CUDA)"
RUN groupadd --gid 10001 safepolicy \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin safepolicy
COPY --from=build /opt/safepolicy /opt/safepolicy
ENV PATH=/opt/safepolicy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SAFEPOLICY_SERVER_REPO=/models \
    SAFEPOLICY_SERVER_ONNX_PROVIDERS=auto \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 50051 9464
ENTRYPOINT ["safepolicy"]
CMD ["serve"]
