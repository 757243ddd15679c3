# The node image for `ray up cluster.yaml`: Ray with CUDA, PyTorch, and spotray.
#
# The base image's Ray version must equal pyproject's `ray[...]==` pin: head, workers
# and the client that submits jobs must all run the same Ray
# (tests/unit/test_dockerfile.py checks it). The -gpu tag carries CUDA and the NVIDIA
# libraries that NCCL needs; the head node runs the same image without using the GPU.
FROM rayproject/ray:2.60.0-py311-gpu

# PyTorch from PyPI is the CUDA build on Linux x86_64; the pin range is pyproject's.
RUN pip install --no-cache-dir "torch>=2.4"

WORKDIR /home/ray/spotray
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users spotray ./spotray
COPY --chown=ray:users train ./train
# Installs the `spotray` command (for `spotray watch` on every node) and the two packages;
# Ray itself is already at the pinned version, so pip leaves it alone.
RUN pip install --no-cache-dir . && spotray --help > /dev/null

# Checkpoint staging before upload; a local NVMe volume is the place to mount here.
ENV TMPDIR=/tmp
