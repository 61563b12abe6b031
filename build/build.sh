#!/bin/sh
# Build the cni-bridge PyInstaller ONEDIR bundle.
#
#   build/build.sh            -> dist/cni-bridge/{cni-bridge,cni-bridge-launch,_internal/}
#                                dist/bin/cni-bridge -> ../cni-bridge/cni-bridge-launch (symlink)
#
# cni-bridge is the PyInstaller bootloader: the whole plugin. cni-bridge-launch (build/launcher.c)
# is what runtimes exec: it relays a request to the running agent without starting Python and
# execs cni-bridge when the agent says so or none answers. It needs a C compiler (CC, default cc;
# the Makefile installs gcc). The bundle works without it: link to cni-bridge instead, at ~14 ms
# per exec.
#
# Each build gets a fresh id, written into both: the bundle carries it as a data file
# (naming.BUILD_ID_FILE), the launcher gets it with the rest of its configuration in a header
# generated from the package (naming.launcher_header). So the launcher finds exactly the agent
# its own bundle starts; a mismatch is reported by the bundle, and checked below.
#
# Environment: PYTHON (default .venv/bin/python), CNI_BRIDGE_ENTRY (entry script override).
# The symlink works because the PyInstaller bootloader resolves its own path through
# /proc/self/exe, so it finds _internal/ beside the real executable, not beside the link.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
DIST=$ROOT/dist
WORK=$ROOT/build/pyinstaller-work

GEN=$WORK/generated
mkdir -p "$GEN"
BUILD_ID=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$BUILD_ID" >"$GEN/cni-bridge-build-id"
(cd "$ROOT" && "$PYTHON" -m cni_bridge.resident.naming "$BUILD_ID") >"$GEN/cni-bridge-launch.h"

CNI_BRIDGE_BUILD_ID_FILE=$GEN/cni-bridge-build-id \
"$PYTHON" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" "$ROOT/build/cni-bridge.spec"

"${CC:-cc}" -O2 -std=gnu11 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong \
    -I"$GEN" -o "$DIST/cni-bridge/cni-bridge-launch" "$ROOT/build/launcher.c"
strip "$DIST/cni-bridge/cni-bridge-launch"
mkdir -p "$DIST/bin"
ln -sfn ../cni-bridge/cni-bridge-launch "$DIST/bin/cni-bridge"

# The bundle must answer VERSION with nothing from the build environment: no venv on the
# path, no repo, an empty environment; and, exec'd by the launcher, find the launcher its own.
out=$(cd / && env -i CNI_COMMAND=VERSION CNI_BRIDGE_RESIDENT=0 "$DIST/bin/cni-bridge" \
    </dev/null 2>"$GEN/version.err")
case $out in
    *supportedVersions*) ;;
    *) echo "build.sh: the built binary answered VERSION with: $out" >&2; exit 1 ;;
esac
if grep -q mismatch "$GEN/version.err"; then
    cat "$GEN/version.err" >&2
    exit 1
fi
echo "built $DIST/bin/cni-bridge (build $BUILD_ID): $out"
