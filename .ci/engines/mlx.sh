#!/usr/bin/env bash
# A virtualenv with MLX's Linux CPU build and mlx-lm, kept between CI runs on the same machine: the
# MLX interop tests load adapterctl's MLX exports with mlx-lm itself. Prints the virtualenv's python.
set -euo pipefail
MLX=0.32.4
MLX_LM=0.32.2
ROOT=${ADAPTERCTL_ENGINES:-$HOME/.cache/adapterctl-engines}
DEST="$ROOT/mlx-$MLX-lm-$MLX_LM"
if [ -f "$DEST/.complete" ] && [ -x "$DEST/bin/python" ]; then
  echo "$DEST/bin/python"; exit 0
fi
mkdir -p "$ROOT"
rm -rf "$DEST"
PY=${PYTHON:-python3}
"$PY" -m venv "$DEST"
"$DEST/bin/python" -m pip install -q --upgrade pip >&2
"$DEST/bin/python" -m pip install -q "mlx[cpu]==$MLX" "mlx-lm==$MLX_LM" >&2
"$DEST/bin/python" -c "import mlx.core as mx, mlx_lm; print('mlx', mx.__version__, 'mlx-lm', mlx_lm.__version__, mx.default_device())" >&2
touch "$DEST/.complete"
echo "$DEST/bin/python"
