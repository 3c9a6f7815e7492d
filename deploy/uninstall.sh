#!/usr/bin/env bash
# Remove tc-daemon installed by deploy/install.sh.
#
#   sudo deploy/uninstall.sh [--purge] [--prefix DIR]
#
#   (default)     stop and disable the service, remove the unit and the venv;
#                 keep /etc/tc-daemon and any drop-ins in tc-daemon.service.d
#   --purge       also remove /etc/tc-daemon and the unit's drop-in directory
#   --prefix DIR  the prefix given to install.sh (default /opt/tc-daemon)
#   DESTDIR=...   act on a staged root (as install.sh), skipping systemctl
#
# Idempotent: anything already gone is skipped.
set -euo pipefail

PREFIX=/opt/tc-daemon
PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --purge) PURGE=1 ;;
    --prefix) [ $# -ge 2 ] || { echo "--prefix needs a directory" >&2; exit 64; }; PREFIX=$2; shift ;;
    --prefix=*) PREFIX=${1#--prefix=} ;;
    -h|--help) sed -n '2,/^set -/{/^#/p}' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 64 ;;
  esac
  shift
done
PREFIX=${PREFIX%/}
# guard the rm -rf below against an empty or root prefix
case "$PREFIX" in /?*) ;; *) echo "--prefix must be an absolute path other than /: '$PREFIX'" >&2; exit 64 ;; esac

DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
UNIT=$DESTDIR/etc/systemd/system/tc-daemon.service

say() { printf 'tc-daemon uninstall: %s\n' "$*"; }

if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
  echo "tc-daemon uninstall: error: run as root (or set DESTDIR)" >&2; exit 1
fi

LIVE=0
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then LIVE=1; fi

if [ "$LIVE" = 1 ] && systemctl cat tc-daemon.service >/dev/null 2>&1; then
  systemctl disable --now tc-daemon.service || true
  say "stopped and disabled tc-daemon.service"
fi

if [ -e "$UNIT" ]; then rm -f "$UNIT"; say "removed $UNIT"; fi
if [ "$PURGE" = 1 ] && [ -d "$UNIT.d" ]; then rm -rf "$UNIT.d"; say "removed $UNIT.d"; fi
if [ "$LIVE" = 1 ]; then
  systemctl daemon-reload
  systemctl reset-failed tc-daemon.service 2>/dev/null || true
fi

if [ -d "$DESTDIR$PREFIX/venv" ]; then rm -rf "$DESTDIR$PREFIX/venv"; say "removed $DESTDIR$PREFIX/venv"; fi
# the prefix itself only if nothing else lives there
rmdir "$DESTDIR$PREFIX" 2>/dev/null || true

if [ "$PURGE" = 1 ]; then
  if [ -d "$DESTDIR/etc/tc-daemon" ]; then rm -rf "$DESTDIR/etc/tc-daemon"; say "removed $DESTDIR/etc/tc-daemon"; fi
elif [ -d "$DESTDIR/etc/tc-daemon" ]; then
  say "kept $DESTDIR/etc/tc-daemon (--purge removes it)"
fi
say "done"
