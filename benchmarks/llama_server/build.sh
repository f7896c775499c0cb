#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` from the llama.cpp source vendored in the llama-cpp-python
# sdist lite-delta pins, so the peer runs the same ggml version with the same CPU flags as the
# installed llama-cpp-python (a default source install compiles ggml with GGML_NATIVE=ON; pass the
# CMAKE_ARGS you installed llama-cpp-python with to match any other choice). Builds once, into the
# ignored .bench/llama-server/; CI does not run this.
#
#   bash benchmarks/llama_server/build.sh [llama_cpp_python-0.3.36.tar.gz]
#
# Without an sdist argument it runs `pip download --no-binary :all: --no-deps` of the pinned version.
# JOBS (default 1) sets the build's parallelism. Prints the path of the binary on its last line.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=$(python -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
DEST=.bench/llama-server
BIN="$DEST/bin/llama-server"
if [[ -x "$BIN" && -f "$DEST/bin/VERSION" && "$(cat "$DEST/bin/VERSION")" == "$VERSION ${CMAKE_ARGS:-}" ]]; then
  echo "already built: $BIN"
  echo "$BIN"
  exit 0
fi
mkdir -p "$DEST/src" "$DEST/bin"
SDIST=${1:-}
if [[ -z "$SDIST" ]]; then
  SDIST="$DEST/src/llama_cpp_python-$VERSION.tar.gz"
  if [[ ! -f "$SDIST" ]]; then
    pip download --no-binary :all: --no-deps --dest "$DEST/src" "llama-cpp-python==$VERSION"
  fi
fi
[[ -f "$SDIST" ]] || { echo "no sdist at $SDIST" >&2; exit 2; }
TOP="llama_cpp_python-$VERSION"  # the sdist's top folder
SRC="$DEST/src/$TOP/vendor/llama.cpp"
if [[ ! -f "$SRC/tools/server/CMakeLists.txt" ]]; then
  tar xzf "$SDIST" -C "$DEST/src" --wildcards "$TOP/vendor/llama.cpp/*"
fi
if [[ ! -f "$SRC/tools/server/CMakeLists.txt" ]]; then
  echo "$SDIST has no vendor/llama.cpp/tools/server (a trimmed sdist?): pass the full PyPI sdist" >&2
  exit 2
fi
# Static, no network parts (curl, OpenSSL, the web UI download), same ggml CPU flags as a
# default llama-cpp-python source build (native), plus whatever CMAKE_ARGS the user installed with.
# shellcheck disable=SC2086
cmake -S "$SRC" -B "$DEST/build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  ${CMAKE_ARGS:-}
cmake --build "$DEST/build" --target llama-server -j "${JOBS:-1}"
cp "$DEST/build/bin/llama-server" "$BIN"
echo "$VERSION ${CMAKE_ARGS:-}" > "$DEST/bin/VERSION"
"$BIN" --version 2>&1 | tail -2
echo "$BIN"
