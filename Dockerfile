# mei on a CUDA PyTorch image: the worker of docker-compose.yml, or any GPU machine.
#
#   docker build -t mei .
#   docker run --rm --gpus all -e DJ_HOST=... -e DJ_USER=... -e DJ_PASS=... mei demo
#
# The base image brings CUDA, cuDNN and a CUDA build of PyTorch; pip keeps that torch (mei
# needs torch>=2.0) and adds mei with DataJoint 2.x, its PostgreSQL and S3 (MinIO) clients, and
# matplotlib for figures. Choose another PyTorch/CUDA pair with --build-arg BASE_IMAGE=...
ARG BASE_IMAGE=pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MEI_QUIET=1

WORKDIR /opt/mei
COPY pyproject.toml README.md ./
COPY mei ./mei
RUN python -m pip install ".[datajoint,plot]" "datajoint[postgres,s3]>=2.3" "pyyaml>=6" \
    && python -c "import torch, datajoint, mei.cli, mei.plot; print('mei', mei.__version__, 'torch', torch.__version__, 'datajoint', datajoint.__version__)"

# Results (figures of `mei demo`, `mei generate` output) go here; mount a volume on it.
WORKDIR /results
ENTRYPOINT ["mei"]
CMD ["demo", "--database", "configured"]
