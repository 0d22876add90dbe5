#!/usr/bin/env bash
# A virtualenv with SGLang's Python LoRA loader (sglang on PyPI), kept between CI runs on the same
# machine. SGLang's server needs CUDA kernels; its LoRA loading and normalisation code
# (python/sglang/srt/lora/: lora_config.py, lora.py, utils.py, lora_manager.py) is plain Python
# on torch, so the wheel goes in with --no-deps next to CPU torch and the few packages those
# modules import (tests/interop/sglang_runner.py stubs the GPU-only imports and says which).
# Prints the virtualenv's python on stdout.
set -euo pipefail
VERSION=0.5.23
ROOT=${ADAPTERCTL_ENGINES:-$HOME/.cache/adapterctl-engines}
DEST="$ROOT/sglang-$VERSION"
if [ -f "$DEST/.complete" ] && [ -x "$DEST/bin/python" ]; then
  echo "$DEST/bin/python"; exit 0
fi
mkdir -p "$ROOT"
rm -rf "$DEST"
PY=${PYTHON:-python3}
"$PY" -m venv "$DEST"
"$DEST/bin/python" -m pip install -q --upgrade pip >&2
# sglang's own pins for torch (2.14.1, PyPI's CUDA build: it runs on CPU; the CPU 2.13 wheel with
# a matching torchvision is not on PyPI: torchvision 0.28's operators fail to register on it),
# transformers and tvm-ffi, and what `import sglang.srt.lora.lora_manager` imports on the way
# (found by importing it until nothing was missing). About 6 GB, cached.
"$DEST/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 "transformers==5.19.0" \
  triton==3.8.0 safetensors numpy huggingface_hub pydantic psutil requests tqdm packaging pyzmq \
  orjson msgspec einops setproctitle pybase64 pillow starlette IPython aiohttp dill \
  "apache-tvm-ffi==0.1.11" compressed-tensors openai partial_json_parser gguf loguru sentencepiece >&2
"$DEST/bin/python" -m pip install -q --no-deps "sglang==$VERSION" >&2
"$DEST/bin/python" -c "import sglang, torch, sglang.srt.lora.lora_manager; print('sglang', sglang.__version__, 'torch', torch.__version__)" >&2
touch "$DEST/.complete"
echo "$DEST/bin/python"
