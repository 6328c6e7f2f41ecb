#!/bin/sh
# ztna installer, served by a ztna node at /install.sh:
#   curl -fsSL http://<node>/install.sh | ZTNA_AUTH_KEY=tskey-auth-... sh
# Downloads ztna from the node that served this script, checks its SHA-256, installs it
# (ZTNA_PREFIX/bin, else /usr/local/bin as root, else ~/.local/bin) and, when ZTNA_AUTH_KEY is
# set, starts the agent: as a systemd service where systemd runs (as root), otherwise in the
# background with a log file. ZTNA_SERVICE=systemd|background|none forces a choice.
set -eu

SOURCE="${ZTNA_INSTALL_SERVER:-@SOURCE@}"
CLUSTER="${ZTNA_SERVER:-@CLUSTER@}"

fail() {
  echo "ztna install: $*" >&2
  exit 1
}

fetch() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --connect-timeout 10 "$1" -o "$2"
  elif command -v wget >/dev/null 2>&1; then
    wget -q -T 10 "$1" -O "$2"
  else
    fail "need curl or wget to download ztna"
  fi
}

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  fail "this node serves ztna for Linux x86_64 only, not $(uname -s) $(uname -m)"
fi
if [ -n "${ZTNA_PREFIX:-}" ]; then
  BIN_DIR="$ZTNA_PREFIX/bin"
elif [ "$(id -u)" = 0 ]; then
  BIN_DIR=/usr/local/bin
else
  BIN_DIR="$HOME/.local/bin"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
fetch "$SOURCE/download/ztna-linux-x86_64" "$tmp/ztna" || fail "cannot download ztna from $SOURCE: is the node reachable?"
fetch "$SOURCE/download/ztna-linux-x86_64.sha256" "$tmp/ztna.sha256" || fail "cannot download the checksum from $SOURCE"
expected=$(cut -d' ' -f1 "$tmp/ztna.sha256")
actual=$(sha256 "$tmp/ztna")
[ -n "$expected" ] && [ "$expected" = "$actual" ] || fail "checksum mismatch (expected $expected, got $actual): not installing"
mkdir -p "$BIN_DIR"
cp "$tmp/ztna" "$BIN_DIR/ztna.new"
chmod 0755 "$BIN_DIR/ztna.new"
mv "$BIN_DIR/ztna.new" "$BIN_DIR/ztna"
echo "ztna installed to $BIN_DIR/ztna"

if [ -z "${ZTNA_AUTH_KEY:-}" ]; then
  echo "To enrol this machine: ZTNA_SERVER=$CLUSTER ZTNA_AUTH_KEY=tskey-auth-... $BIN_DIR/ztna up"
  exit 0
fi

mode="${ZTNA_SERVICE:-auto}"
if [ "$mode" = auto ]; then
  if [ "$(id -u)" = 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    mode=systemd
  else
    mode=background
  fi
fi

case "$mode" in
systemd)
  mkdir -p /etc/ztna /var/lib/ztna
  (umask 077 && printf 'ZTNA_SERVER=%s\nZTNA_AUTH_KEY=%s\n' "$CLUSTER" "$ZTNA_AUTH_KEY" >/etc/ztna/agent.env)
  cat >/etc/systemd/system/ztna.service <<UNIT
[Unit]
Description=ztna agent
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/ztna/agent.env
ExecStart=$BIN_DIR/ztna up --state-dir /var/lib/ztna
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable --now ztna.service
  echo "ztna agent started as the systemd service ztna.service (journalctl -u ztna)"
  ;;
background)
  if [ -n "${ZTNA_STATE_DIR:-}" ]; then
    state="$ZTNA_STATE_DIR"
  elif [ "$(id -u)" = 0 ]; then
    state=/var/lib/ztna
  else
    state="${XDG_STATE_HOME:-$HOME/.local/state}/ztna"
  fi
  mkdir -p "$state"
  log="$state/ztna.log"
  ZTNA_SERVER="$CLUSTER" nohup "$BIN_DIR/ztna" up --state-dir "$state" >>"$log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$state/ztna.pid"
  i=0
  while [ $i -lt 100 ]; do
    if grep -q "Enrolled\|Already enrolled" "$log" 2>/dev/null; then
      echo "ztna agent running in the background (pid $pid), log: $log"
      exit 0
    fi
    kill -0 "$pid" 2>/dev/null || { tail -n 5 "$log" >&2; fail "the agent stopped; see $log"; }
    sleep 0.2
    i=$((i + 1))
  done
  fail "the agent did not enrol within 20 seconds; see $log"
  ;;
none)
  echo "Start the agent with: ZTNA_SERVER=$CLUSTER ZTNA_AUTH_KEY=... $BIN_DIR/ztna up"
  ;;
*)
  fail "ZTNA_SERVICE must be systemd, background or none, not $mode"
  ;;
esac
