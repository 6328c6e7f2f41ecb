#!/bin/sh
# ztna installer, served by a ztna node at /install.sh:
#   curl -fsSL http://<node>/install.sh | ZTNA_AUTH_KEY=tskey-auth-... sh
#   curl -fsSL --cacert ca.crt https://<node>/install.sh | ZTNA_AUTH_KEY=tskey-auth-... sh
# Downloads ztna from the node that served this script (its configured public URL, never the
# request's Host header), checks its SHA-256, installs it (ZTNA_PREFIX/bin, else /usr/local/bin
# as root, else ~/.local/bin) and, when ZTNA_AUTH_KEY is set, enrols the machine and starts the
# agent: as a systemd service where systemd runs (as root), otherwise in the background with a
# log file. ZTNA_SERVICE=systemd|background|none forces a choice. With HTTPS, every download
# trusts only the cluster CA below (pinned: its SHA-256 is printed), and the agent gets it too.
# The auth key is used for the enrolment and written nowhere.
set -eu

# Filled in by the node from its configuration; every value was validated and is quoted.
SOURCE=@SOURCE@
CLUSTER=@CLUSTER@
CA_PEM=@CA_PEM@
CA_SHA256=@CA_SHA256@

if [ -n "${ZTNA_INSTALL_SERVER:-}" ]; then SOURCE="$ZTNA_INSTALL_SERVER"; fi
if [ -n "${ZTNA_SERVER:-}" ]; then CLUSTER="$ZTNA_SERVER"; fi

fail() {
  echo "ztna install: $*" >&2
  exit 1
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
if [ -n "${ZTNA_STATE_DIR:-}" ]; then
  STATE="$ZTNA_STATE_DIR"
elif [ "$(id -u)" = 0 ]; then
  STATE=/var/lib/ztna
else
  STATE="${XDG_STATE_HOME:-$HOME/.local/state}/ztna"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

CA_FILE=
if [ -n "$CA_PEM" ]; then
  CA_FILE="$tmp/ca.crt"
  printf '%s\n' "$CA_PEM" >"$CA_FILE"
fi

fetch() {
  if command -v curl >/dev/null 2>&1; then
    if [ -n "$CA_FILE" ]; then
      curl -fsS --proto '=https' --connect-timeout 10 --cacert "$CA_FILE" "$1" -o "$2"
    else
      curl -fsS --connect-timeout 10 "$1" -o "$2"
    fi
  elif command -v wget >/dev/null 2>&1; then
    if [ -n "$CA_FILE" ]; then
      wget -q -T 10 --ca-certificate="$CA_FILE" "$1" -O "$2"
    else
      wget -q -T 10 "$1" -O "$2"
    fi
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

if [ -n "$CA_FILE" ]; then
  echo "ztna install: trusting only the cluster CA with SHA-256 $CA_SHA256"
fi
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

mkdir -p "$STATE"
chmod 0700 "$STATE"
AGENT_CA=
if [ -n "$CA_FILE" ]; then
  AGENT_CA="$STATE/ca.crt"
  cp "$CA_FILE" "$AGENT_CA"
fi

if [ -z "${ZTNA_AUTH_KEY:-}" ]; then
  if [ -n "$AGENT_CA" ]; then
    echo "To enrol this machine: ZTNA_CA_CERT=$AGENT_CA ZTNA_SERVER=$CLUSTER ZTNA_AUTH_KEY=tskey-auth-... $BIN_DIR/ztna up"
  else
    echo "To enrol this machine: ZTNA_SERVER=$CLUSTER ZTNA_AUTH_KEY=tskey-auth-... $BIN_DIR/ztna up"
  fi
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
systemd | background | none) ;;
*) fail "ZTNA_SERVICE must be systemd, background or none, not $mode" ;;
esac

if [ "$mode" = none ]; then
  echo "Start the agent with: ZTNA_SERVER=$CLUSTER ZTNA_AUTH_KEY=... $BIN_DIR/ztna up"
  exit 0
fi

# Enrol now, in the foreground: the key is spent here and kept nowhere; the agent that runs
# afterwards needs only the node key in its state file.
export ZTNA_SERVER="$CLUSTER"
if [ -n "$AGENT_CA" ]; then export ZTNA_CA_CERT="$AGENT_CA"; fi
"$BIN_DIR/ztna" up --enrol-only --state-dir "$STATE" || fail "enrolment failed (see the message above)"
unset ZTNA_AUTH_KEY

case "$mode" in
systemd)
  mkdir -p /etc/ztna
  (
    umask 077
    printf 'ZTNA_SERVER=%s\n' "$CLUSTER" >/etc/ztna/agent.env
    if [ -n "$AGENT_CA" ]; then printf 'ZTNA_CA_CERT=%s\n' "$AGENT_CA" >>/etc/ztna/agent.env; fi
  )
  cat >/etc/systemd/system/ztna.service <<UNIT
[Unit]
Description=ztna agent
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/ztna/agent.env
ExecStart=$BIN_DIR/ztna up --state-dir $STATE
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
  log="$STATE/ztna.log"
  nohup "$BIN_DIR/ztna" up --state-dir "$STATE" >>"$log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$STATE/ztna.pid"
  i=0
  while [ $i -lt 100 ]; do
    if grep -q "Already enrolled" "$log" 2>/dev/null; then
      echo "ztna agent running in the background (pid $pid), log: $log"
      exit 0
    fi
    kill -0 "$pid" 2>/dev/null || { tail -n 5 "$log" >&2; fail "the agent stopped; see $log"; }
    sleep 0.2
    i=$((i + 1))
  done
  fail "the agent did not start within 20 seconds; see $log"
  ;;
esac
