#!/bin/sh
# Install (or uninstall) the cni-bridge ONEDIR bundle built by build/build.sh.
#
#   DESTDIR=/pkgroot CNI_BIN_DIR=/opt/cni/bin build/install.sh            # install
#   DESTDIR=/pkgroot CNI_BIN_DIR=/opt/cni/bin build/install.sh --uninstall
#
# Layout (everything stays inside CNI_BIN_DIR, so copying that one directory to another host,
# as CNI installer DaemonSets do, carries the whole plugin):
#
#   $CNI_BIN_DIR/cni-bridge                 -> cni-bridge.d/<build-id>/cni-bridge-launch (relative)
#   $CNI_BIN_DIR/cni-bridge.d/<build-id>/cni-bridge-launch  native launcher (build/launcher.c):
#                                           relays to a running resident, else execs cni-bridge
#   $CNI_BIN_DIR/cni-bridge.d/<build-id>/cni-bridge     the PyInstaller bootloader
#   $CNI_BIN_DIR/cni-bridge.d/<build-id>/_internal/     interpreter, libraries, modules
#
# The bootloader resolves its own path through /proc/self/exe, so it finds _internal/ beside
# the real executable when exec'd through the link. <build-id> is a hash of the bundle: an
# upgrade copies the new bundle beside the old one, then swaps the link with one rename(2), so
# a runtime exec'ing the plugin meanwhile gets the old or the new bundle, never half of one.
# Older bundles are removed afterwards (an exec that resolved the old link a moment before may
# still lose its files; runtimes retry a failed ADD).
#
# The node agent's systemd unit (build/cni-bridge.service) goes to $UNIT_DIR/cni-bridge.service
# with the plugin's path filled in. Where systemd runs (and no DESTDIR is given) it is enabled and
# (re)started, so even the first ADD after boot finds the engine warm; under a DESTDIR it is only
# installed (enabling is the package's business); elsewhere it is left out, and the plugin starts
# its agent on demand. --uninstall stops, disables and removes it.
#
# Environment: DESTDIR (default empty), CNI_BIN_DIR (default /opt/cni/bin),
# BUNDLE (default <repo>/dist/cni-bridge), UNIT_DIR (default /etc/systemd/system).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
CNI_BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
BUNDLE=${BUNDLE:-$ROOT/dist/cni-bridge}
NAME=cni-bridge
BIN=$DESTDIR$CNI_BIN_DIR
PAYLOAD=$BIN/$NAME.d
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
UNIT=$DESTDIR$UNIT_DIR/$NAME.service

# systemctl only for the running system, never for a tree being assembled under DESTDIR.
systemd_here() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

install_unit() {
    if ! systemd_here && [ -z "$DESTDIR" ]; then
        echo "no systemd running: the plugin starts its agent on demand (unit not installed)"
        return
    fi
    mkdir -p "$DESTDIR$UNIT_DIR"
    sed "s|@CNI_BIN_DIR@|$CNI_BIN_DIR|g" "$ROOT/build/$NAME.service" > "$UNIT.tmp.$$"
    mv -f "$UNIT.tmp.$$" "$UNIT"
    if systemd_here; then
        systemctl daemon-reload
        systemctl enable "$NAME.service"
        systemctl restart "$NAME.service"  # an upgrade: the agent of the new bundle
        echo "installed, enabled and started $UNIT"
    else
        echo "installed $UNIT (not enabled: DESTDIR)"
    fi
}

uninstall_unit() {
    [ -e "$UNIT" ] || return 0
    if systemd_here; then
        systemctl disable --now "$NAME.service" || true
    fi
    rm -f "$UNIT"
    if systemd_here; then systemctl daemon-reload; fi
    echo "removed $UNIT"
}

die() { echo "install.sh: $*" >&2; exit 1; }

uninstall() {
    uninstall_unit
    if [ -L "$BIN/$NAME" ]; then
        case $(readlink "$BIN/$NAME") in
            "$NAME.d/"*) rm -f "$BIN/$NAME" ;;
            *) die "$BIN/$NAME is a link we did not make; left alone" ;;
        esac
    fi
    rm -rf "$PAYLOAD"
    echo "removed $NAME from $BIN"
}

bundle_id() {
    # Content hash over relative paths and file contents: the same build installs to the same id.
    (cd "$BUNDLE" && find . -type f -print | LC_ALL=C sort | xargs sha256sum) \
        | sha256sum | cut -c1-16
}

install_bundle() {
    [ -x "$BUNDLE/$NAME" ] && [ -d "$BUNDLE/_internal" ] \
        || die "no bundle at $BUNDLE (run build/build.sh first)"
    if [ -e "$BIN/$NAME" ] && [ ! -L "$BIN/$NAME" ] && [ -d "$BIN/$NAME" ]; then
        die "$BIN/$NAME is a directory; refusing to replace it"
    fi
    id=$(bundle_id)
    mkdir -p "$PAYLOAD"
    if [ ! -d "$PAYLOAD/$id" ]; then
        tmp=$PAYLOAD/.$id.tmp.$$
        rm -rf "$tmp"
        cp -R "$BUNDLE" "$tmp"
        chmod -R u+rwX,go+rX,go-w "$tmp"
        mv "$tmp" "$PAYLOAD/$id"
    fi
    entry=$NAME
    [ -x "$PAYLOAD/$id/$NAME-launch" ] && entry=$NAME-launch
    ln -s "$NAME.d/$id/$entry" "$BIN/.$NAME.link.$$"
    mv -Tf "$BIN/.$NAME.link.$$" "$BIN/$NAME"
    for old in "$PAYLOAD"/* "$PAYLOAD"/.*.tmp.*; do
        [ -e "$old" ] || continue
        [ "$old" = "$PAYLOAD/$id" ] || rm -rf "$old"
    done
    echo "installed $BIN/$NAME -> $NAME.d/$id/$entry"
    install_unit
}

case ${1:-} in
    "") install_bundle ;;
    --uninstall) uninstall ;;
    *) die "usage: [DESTDIR=..] [CNI_BIN_DIR=..] $0 [--uninstall]" ;;
esac
