"""The container image really builds and runs (deploy/docker; docs/kubernetes.md "The image"):
deploy/docker/build-image.sh builds deploy/docker/Dockerfile with Debian's buildah from base images
it makes with debootstrap (no Docker daemon, no registry but Debian's mirror), then runs the three
binaries inside the image: --help, the broker entrypoint refusing a bad broker count, a broker and
an edge publishing and reading back over ZeroMQ and HTTP, and the same as a pod runs it (read-only
root, a tmpfs /tmp, a volume with fsGroup-style ownership, uid 10001).

About 80 s from nothing on the 2-core machine (debootstrap ~35 s, the image ~40 s: apt installs
and the compile in the build stage). Registered RUN_SERIAL (tests/integration/CMakeLists.txt) so
it does not compete with timing-sensitive tests. Its storage lives in a temporary directory that
`build-image.sh clean` removes afterwards.
"""

import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import SOURCE_DIR

SCRIPT = SOURCE_DIR / "deploy" / "docker" / "build-image.sh"


@pytest.mark.skipif(os.geteuid() != 0, reason="buildah's chroot isolation and debootstrap need root")
def test_the_image_builds_and_its_binaries_run():
    state = tempfile.mkdtemp(prefix="herald-image-", dir="/var/tmp")
    env = {**os.environ, "HERALD_IMAGE_STATE": state, "HERALD_IMAGE": "localhost/herald:ci"}
    try:
        proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                              timeout=840)
        out = proc.stdout + proc.stderr
        print(out)
        assert proc.returncode == 0, out
        for line in ("herald-broker --help: ok", "herald-edge --help: ok", "herald --help: ok",
                     "entrypoint refuses ordinal 3 of 3", "ldd: every library found",
                     "root file system: read-only", "published and read back through the edge",
                     "all checks passed"):
            assert line in out, out
        assert out.count("SIGTERM, exit 0") == 4, out
    finally:
        subprocess.run(["bash", str(SCRIPT), "clean"], env=env, capture_output=True, timeout=300)
        shutil.rmtree(state, ignore_errors=True)
