# Shared by scripts/cluster-up, scripts/test and .ci/run: installs what is missing and picks the
# cargo target directory. Source it; do not run it.

# One target directory outside the clone, shared by every run, so RocksDB is built once.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  if [ -w /var/cache ] || [ "$(id -u)" = 0 ]; then
    export CARGO_TARGET_DIR=/var/cache/ztna-target
  else
    export CARGO_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/ztna-target"
  fi
fi
mkdir -p "$CARGO_TARGET_DIR"

# ensure_packages PKG…: installs the Debian packages that are not installed yet.
ensure_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing ${missing[*]}" >&2
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "error: need root (or sudo) to apt-get install ${missing[*]}" >&2; return 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ensure_rust: cargo must be on PATH (rustup's default location is tried too).
ensure_rust() {
  if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null || { echo "error: Rust is not installed; install it with rustup (https://rustup.rs)" >&2; return 1; }
}

# Packages every build needs: RocksDB's bindings are generated with libclang.
BUILD_PACKAGES=(libclang-dev curl binutils)
# The benchmark (its own workspace, bench/) also needs protoc, its etcd client's gRPC code being
# generated from etcd's .proto files, and etcd itself.
BENCH_PACKAGES=(protobuf-compiler etcd-server)
# The console's browser test drives Debian's Chromium through its chromedriver.
BROWSER_PACKAGES=(chromium chromium-driver)
