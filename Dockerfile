# The image every Ray node of a raylsm cluster runs (cluster/kuberay-raycluster.yaml): the Ray image of
# the pinned Ray and Python versions plus the raylsm wheel that `make dist` builds.
#
#   make dist image                  # rayproject/ray:2.60.0-py311 + raylsm: head and kv pods
#   make dist image-gpu              # rayproject/ray:2.60.0-py311-gpu + SGLang 0.5.23 + raylsm: SGLang pods
#
# raylsm goes in without extras: Ray is the image's own (so every node and driver runs the same Ray),
# and the `sglang` extra would put a CPU torch over SGLang's CUDA one.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311
FROM ${RAY_IMAGE}
ARG RAY_VERSION=2.60.0
# Empty: no SGLang (head and kv images). A version: that SGLang, with its own CUDA torch.
ARG SGLANG_VERSION=

COPY --chown=1000:100 dist/ /tmp/raylsm-dist/
RUN if [ -n "${SGLANG_VERSION}" ]; then pip install --no-cache-dir "sglang==${SGLANG_VERSION}"; fi \
 && pip install --no-cache-dir /tmp/raylsm-dist/raylsm-*.whl \
 && rm -rf /tmp/raylsm-dist \
 && python -c "import ray, raylsm.cli; assert ray.__version__ == '${RAY_VERSION}', ray.__version__" \
 && raylsm --help > /dev/null
COPY --chown=1000:100 cluster/sglang-launch.sh /home/ray/raylsm-cluster/sglang-launch.sh
