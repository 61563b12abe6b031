#!/bin/sh
# Build the cni-bridge PyInstaller ONEDIR bundle.
#
#   build/build.sh            -> dist/cni-bridge/{cni-bridge,_internal/}
#                                dist/bin/cni-bridge -> ../cni-bridge/cni-bridge (symlink)
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

mkdir -p "$DIST/bin"
ln -sfn ../cni-bridge/cni-bridge "$DIST/bin/cni-bridge"

# The bundle must answer VERSION with nothing from the build environment: no venv on the
# path, no repo, an empty environment.
out=$(cd / && env -i CNI_COMMAND=VERSION "$DIST/bin/cni-bridge" </dev/null)
case $out in
    *supportedVersions*) echo "built $DIST/bin/cni-bridge: $out" ;;
    *) echo "build.sh: the built binary answered VERSION with: $out" >&2; exit 1 ;;
esac
