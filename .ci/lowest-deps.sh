#!/usr/bin/env bash
# CI: the declared lower bounds hold. A separate virtualenv gets the LOWEST version each light
# dependency declares in pyproject.toml (typer, rich, safetensors, huggingface_hub, pyyaml, numpy;
# no torch), and the CLI smoke tests that need no torch run in it (pytest -m smoke). A bound that
# does not hold fails here rather than on a user's machine.
#
# The virtualenv is cached under ~/.cache/adapterctl-engines/, keyed by the pins and the Python
# version; the package itself is (re)installed from this checkout each run (-e . --no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
LIGHT="typer rich safetensors huggingface_hub pyyaml numpy"

# name>=X in pyproject.toml's dependencies -> name==X (a dependency without a bound is an error:
# its lowest version would be whatever pip finds first)
PINS=$("$PY" - "$LIGHT" <<'PYEOF'
import re, sys
text = open("pyproject.toml").read()
deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
declared = dict(re.findall(r'"([A-Za-z0-9_.\-]+)\s*(>=[^",;]*)?', deps))
pins = []
for name in sys.argv[1].split():
    bound = declared.get(name)
    if bound is None or not bound.startswith(">="):
        sys.exit(f"pyproject.toml: {name} has no lower bound (>=X) to test")
    pins.append(f"{name}=={bound[2:].strip()}")
print(" ".join(pins))
PYEOF
)
KEY=$(printf '%s %s' "$PINS" "$("$PY" -c 'import sys; print(sys.version.split()[0])')" | sha256sum | cut -c1-12)
VENV=${ADAPTERCTL_LOWEST_VENV:-$HOME/.cache/adapterctl-engines/lowest-deps-$KEY}

if [ ! -f "$VENV/.complete" ]; then
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q --only-binary=:all: $PINS pytest
  echo "$PINS" > "$VENV/.complete"
fi
if ! log=$("$VENV/bin/python" -m pip install -q -e . --no-deps 2>&1); then
  echo "$log" >&2
  exit 1
fi

echo "lowest dependencies: $PINS" >&2
if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "lowest-deps: torch is importable in $VENV; the smoke tests must run without it" >&2
  exit 1
fi
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m smoke tests/cli/test_smoke.py
