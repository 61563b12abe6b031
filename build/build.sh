#!/bin/sh
# Build the cni-bridge PyInstaller ONEDIR bundle.
#
#   build/build.sh            -> dist/cni-bridge/{cni-bridge,cni-bridge-launch,_internal/}
#                                dist/bin/cni-bridge -> ../cni-bridge/cni-bridge-launch (symlink)
#
# cni-bridge is the PyInstaller bootloader: the whole plugin. cni-bridge-launch (build/launcher.c)
# is what runtimes exec: it relays a request to a running resident without starting Python and
# execs cni-bridge for everything else. It needs a C compiler (CC, default cc; the Makefile
# installs gcc). The bundle works without it: link to cni-bridge instead, at ~14 ms per exec.
#
# Environment: PYTHON (default .venv/bin/python), CNI_BRIDGE_ENTRY (entry script override).
# The symlink works because the PyInstaller bootloader resolves its own path through
# /proc/self/exe, so it finds _internal/ beside the real executable, not beside the link.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
DIST=$ROOT/dist
WORK=$ROOT/build/pyinstaller-work

"$PYTHON" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" "$ROOT/build/cni-bridge.spec"

"${CC:-cc}" -O2 -std=gnu11 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong \
    -o "$DIST/cni-bridge/cni-bridge-launch" "$ROOT/build/launcher.c"
strip "$DIST/cni-bridge/cni-bridge-launch"
mkdir -p "$DIST/bin"
ln -sfn ../cni-bridge/cni-bridge-launch "$DIST/bin/cni-bridge"

# The bundle must answer VERSION with nothing from the build environment: no venv on the
# path, no repo, an empty environment.
out=$(cd / && env -i CNI_COMMAND=VERSION "$DIST/bin/cni-bridge" </dev/null)
case $out in
    *supportedVersions*) echo "built $DIST/bin/cni-bridge: $out" ;;
    *) echo "build.sh: the built binary answered VERSION with: $out" >&2; exit 1 ;;
esac
