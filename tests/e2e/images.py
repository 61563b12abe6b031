"""Container images for the end-to-end tests, made here from the machine's static busybox: a root
filesystem (podman --rootfs) and an OCI image archive (`ctr image import`). No registry."""

from __future__ import annotations

import hashlib
import io
import json
import platform
import shutil
import tarfile
from pathlib import Path

from tests.lab import run

BUSYBOX = Path("/bin/busybox")


def busybox_rootfs(dest: Path) -> Path:
    """A root filesystem: static busybox, one relative link per applet, the usual directories."""
    for sub in ("bin", "dev", "etc", "proc", "sys", "tmp", "www", "run"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    applets = run([str(BUSYBOX), "--list"]).stdout.split()
    for applet in applets:
        link = dest / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    return dest


def _oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _layer_tar(rootfs: Path) -> bytes:
    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(rootfs.iterdir()):
            tar.add(child, arcname=child.name, filter=normalise)
    return buf.getvalue()


def write_oci_archive(rootfs: Path, dest: Path, image: str) -> None:
    """An OCI image layout tarball that `ctr image import` accepts: one uncompressed layer."""
    layer = _layer_tar(rootfs)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": _oci_arch(),
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "platform": {"architecture": _oci_arch(), "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": image,
                        "org.opencontainers.image.ref.name": image.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
    ).encode()
    blobs = {
        f"blobs/sha256/{d.split(':', 1)[1]}": data
        for d, data in (
            (layer_digest, layer),
            (config_digest, config),
            (manifest_digest, manifest),
        )
    }
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index, **blobs}
    with tarfile.open(dest, "w") as tar:
        for dname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dname)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
