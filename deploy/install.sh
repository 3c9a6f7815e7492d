#!/usr/bin/env bash
# Install tc-daemon as a systemd service on Debian 12 / Raspberry Pi OS (bookworm).
#
#   sudo deploy/install.sh [--no-start] [--prefix DIR]
#
#   --no-start    install and enable, but do not (re)start the service
#   --prefix DIR  where the venv goes (default /opt/tc-daemon); the unit's
#                 ExecStart is rewritten to match
#   DESTDIR=/tmp/root deploy/install.sh
#                 stage everything under a scratch root and skip systemctl (for
#                 tests: a venv's scripts embed its absolute path, so a staged
#                 venv is not relocatable)
#   PYTHON=python3.11  interpreter for the venv (default python3)
#
# Idempotent: re-running upgrades the package from this source tree, rewrites the
# unit, keeps an existing /etc/tc-daemon/config.yaml and restarts the service
# (started only once `tc-daemon run --check-config` accepts the config).
set -euo pipefail
# the service runs as a DynamicUser: everything installed must be world-readable
umask 022

PREFIX=/opt/tc-daemon
START=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-start) START=0 ;;
    --prefix) [ $# -ge 2 ] || { echo "--prefix needs a directory" >&2; exit 64; }; PREFIX=$2; shift ;;
    --prefix=*) PREFIX=${1#--prefix=} ;;
    -h|--help) sed -n '2,/^set -/{/^#/p}' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 64 ;;
  esac
  shift
done
case "$PREFIX" in /*) ;; *) echo "--prefix must be absolute: $PREFIX" >&2; exit 64 ;; esac
PREFIX=${PREFIX%/}

DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
PYTHON=${PYTHON:-python3}
SRC=$(cd "$(dirname "$0")/.." && pwd)
VENV=$DESTDIR$PREFIX/venv
ETC=$DESTDIR/etc/tc-daemon
UNIT_DIR=$DESTDIR/etc/systemd/system

say() { printf 'tc-daemon install: %s\n' "$*"; }
die() { printf 'tc-daemon install: error: %s\n' "$*" >&2; exit 1; }

{ [ -f "$SRC/setup.cfg" ] && [ -f "$SRC/tc-daemon.service" ]; } || die "$SRC is not a tc-daemon source tree"
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (or set DESTDIR for a staged install)"
fi
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: apt-get install python3"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "Python >= 3.9 needed"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || die "no venv module: apt-get install python3-venv"

# 1. venv (kept across runs; recreated only if broken)
if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  say "creating venv $VENV"
  mkdir -p "$(dirname "$VENV")"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
vpip() { "$VENV/bin/python" -m pip --disable-pip-version-check --no-input "$@"; }

# 2. the package. armv7l (32-bit Raspberry Pi OS) has no ai-edge-litert wheel:
# use tflite-runtime 2.14.0 (built against numpy 1.x, glibc >= 2.34 i.e. bookworm).
# numpy has no armv7l wheel on PyPI; Raspberry Pi OS's /etc/pip.conf points pip at
# piwheels, which has one. Keep the list below in step with setup.cfg install_requires.
# pip builds in the source tree (build/, *.egg-info): build from a scratch copy so
# the tree stays clean (or read-only) and no stale build/ leaks into the wheel.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
  --exclude='*.egg-info' --exclude=./data --exclude=./runs --exclude=.pytest_cache \
  --exclude=.hypothesis --exclude=__pycache__ -cf - . | tar -C "$WORK" -xf -
ARCH=$(uname -m)
say "installing tc-daemon from $SRC ($ARCH)"
if [ "$ARCH" = armv7l ]; then
  vpip install --no-deps "$WORK"
  vpip install 'tflite-runtime==2.14.0' 'numpy<2' prometheus-client pyyaml
else
  vpip install "$WORK"
fi
[ -x "$VENV/bin/tc-daemon" ] || die "pip did not install $VENV/bin/tc-daemon"

# 3. config: never overwrite the operator's. 0644: the service's DynamicUser
# must read it, and it holds no secrets.
mkdir -p "$ETC"
chmod 0755 "$ETC"
if [ -e "$ETC/config.yaml" ]; then
  say "keeping existing $ETC/config.yaml"
else
  [ -f "$SRC/deploy/config.example.yaml" ] || die "missing $SRC/deploy/config.example.yaml"
  install -m 0644 "$SRC/deploy/config.example.yaml" "$ETC/config.yaml"
  say "wrote $ETC/config.yaml from deploy/config.example.yaml: set the interface there"
fi

# 4. unit, with ExecStart pointing at this prefix's venv
mkdir -p "$UNIT_DIR"
sed "s#/opt/tc-daemon/venv/#$PREFIX/venv/#g" "$SRC/tc-daemon.service" >"$WORK/tc-daemon.service"
install -m 0644 "$WORK/tc-daemon.service" "$UNIT_DIR/tc-daemon.service"
say "installed $UNIT_DIR/tc-daemon.service"

# 5. systemd: only on the live root, and only when systemd is PID 1
if [ -n "$DESTDIR" ]; then
  say "DESTDIR set: skipping systemctl"
elif [ ! -d /run/systemd/system ]; then
  say "systemd is not running here: skipping systemctl (enable tc-daemon by hand)"
else
  systemctl daemon-reload
  systemctl enable tc-daemon.service
  if [ "$START" = 1 ] && ! "$VENV/bin/tc-daemon" run --config "$ETC/config.yaml" --check-config; then
    # e.g. the example config names no interface yet: starting would only exit 78
    say "enabled, not started: fix $ETC/config.yaml, then: systemctl start tc-daemon"
  elif [ "$START" = 1 ]; then
    # restart, not enable --now: a re-run must pick up the new code
    systemctl restart tc-daemon.service
    say "started; check: systemctl status tc-daemon; curl -s 127.0.0.1:9105/metrics | head"
  else
    say "enabled, not started (--no-start): systemctl start tc-daemon"
  fi
fi
say "done"
