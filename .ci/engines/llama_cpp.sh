#!/usr/bin/env bash
# Build llama.cpp (llama-completion, llama-quantize, llama-perplexity and llama-results, plus its
# converters and gguf-py) from the source that the
# llama-cpp-python source distribution on PyPI ships, into a cache kept between CI runs on the same
# machine. Prints the llama.cpp folder on stdout. About 10 minutes on 2 cores the first time.
set -euo pipefail
VERSION=0.3.36  # llama-cpp-python release; it vendors llama.cpp (October 2026)
ROOT=${ADAPTERCTL_ENGINES:-$HOME/.cache/adapterctl-engines}
DEST="$ROOT/llama.cpp-pypi-$VERSION"
TARGETS="llama-completion llama-quantize llama-perplexity llama-results"
if [ -f "$DEST/.complete" ] && [ -x "$DEST/build/bin/llama-completion" ]; then
  # a cache built before a tool was needed (eval's GGUF variants: llama-perplexity, llama-results): add it
  for t in $TARGETS; do
    [ -x "$DEST/build/bin/$t" ] || cmake --build "$DEST/build" --target "$t" -j "$(nproc)" >&2
  done
  echo "$DEST"; exit 0
fi
mkdir -p "$ROOT"
rm -rf "$DEST" "$ROOT/.llama-dl"
PY=${PYTHON:-python3}
"$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$ROOT/.llama-dl" >&2
tar xzf "$ROOT/.llama-dl/llama_cpp_python-$VERSION.tar.gz" -C "$ROOT/.llama-dl"
mv "$ROOT/.llama-dl/llama_cpp_python-$VERSION/vendor/llama.cpp" "$DEST"
rm -rf "$ROOT/.llama-dl"
# Static libraries: the binaries keep working wherever the cache lives.
cmake -S "$DEST" -B "$DEST/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >&2
cmake --build "$DEST/build" --target $TARGETS -j "$(nproc)" >&2
touch "$DEST/.complete"
echo "$DEST"
