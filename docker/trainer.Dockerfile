# Training and auditing: CUDA torch, the safety gyms (Bullet, Safety-Gymnasium, DSRL's offline
# envs), onnx and the server, installed from requirements/lock.txt (--no-deps: the published
# pins conflict) with torch==2.13.0 from PyPI, the CUDA build, in place of the lock's CPU one.
#   docker build -f docker/trainer.Dockerfile -t ghcr.io/safepolicy/trainer:0.1.0 .
#   docker build --build-arg TORCH=cpu ...   for a CPU-only trainer
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH=cuda
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY safepolicy/ safepolicy/
COPY training/ training/
COPY export/ export/
COPY server/ server/
COPY audit/ audit/
COPY docker/install-trainer.sh docker/
RUN PYTHON=python3 sh docker/install-trainer.sh /opt/safepolicy "${TORCH}"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="safepolicy-trainer" \
      org.opencontainers.image.description="safepolicy training and audit (CUDA torch, safety gyms)"
# libGL and GLib for MuJoCo and pybullet rendering (versions: Debian bookworm, 2026-12)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1=1.6.0-1 libglib2.0-0=2.74.6-2+deb12u9 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 safepolicy \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin safepolicy
COPY --from=build /opt/safepolicy /opt/safepolicy
ENV PATH=/opt/safepolicy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MUJOCO_GL=egl \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /work
ENTRYPOINT ["safepolicy"]
CMD ["--help"]
