"""The test's stand-in for gcsfuse: a Debian package named ``gcsfuse`` whose /usr/bin/gcsfuse is a script.

Compute Engine's gcsfuse mounts a bucket from storage.googleapis.com; this machine cannot reach Google, so
the test ships a package with the same name, version and dependencies (``Depends: fuse``, which fuse3
provides, as Google's DEBIAN/control says) and the same command line, which mounts the bucket from the
fake-gcs-server on the host side of the veth with rclone (the host's binary, shipped inside the package
as gcsfuse ships its own). It is as strict as gcsfuse where the appliance could go wrong:

- flags and config keys are checked against gcsfuse's own parameter list for the pinned release
  (gcsfuse-params-v3.11.2.tsv, from upstream cfg/params.yaml): an unknown flag is cobra's
  ``Error: unknown flag: --x``; an unknown config key is an error, as gcsfuse decodes its config file with
  ErrorUnused; values are checked against their type; booleans take ``--flag`` or ``--flag=value``;
- at mount it lists the bucket once, as gcsfuse v3 does (GetStorageLayout): a 403 (the VM's grant has not
  propagated) or a missing bucket ends it with an error, and systemd restarts it;
- without ``implicit-dirs`` it shows only directories that have a placeholder object (``dir/``) and whose
  parents do, as gcsfuse does: our engine writes none, so the index is invisible then.

The only thing it takes from outside its command line is the emulator's address, from
/etc/pypapo-test/gcs-endpoint, which the test writes (on GCE that role is played by the metadata server's
credentials and Google's DNS). Environment variables PYPAPO_TEST_* relocate its data files for the
host-side test of the stand-in itself (tests/vm/test_standin.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from provisioner.appliance.render import GCSFUSE_VERSION

PARAMS_FILE = Path(__file__).with_name("gcsfuse-params-v3.11.2.tsv")
STANDIN_VERSION = GCSFUSE_VERSION  # what the appliance pins: apt must find exactly this version
STANDIN_MAINTAINER = "pypapo vm test <nobody@invalid>"
SHARE = "/usr/share/pypapo-test-gcsfuse"
LIBEXEC = "/usr/lib/pypapo-test-gcsfuse"

GCSFUSE_SCRIPT = Path(__file__).with_name("gcsfuse-standin.sh")  # @SHARE@, @LIBEXEC@, @VERSION@ filled in

# Google's DEBIAN/control at v3.11.2 says `Depends: fuse`; Debian 12's fuse3 provides `fuse`.
CONTROL = """Package: gcsfuse
Version: {version}
Architecture: {arch}
Maintainer: {maintainer}
Depends: fuse
Section: misc
Priority: optional
Description: TEST STAND-IN for gcsfuse (pypapo vm test)
 Mounts a bucket of a local fake-gcs-server with rclone. Not Google's gcsfuse.
"""


def script() -> str:
    """/usr/bin/gcsfuse of the stand-in package."""
    text = GCSFUSE_SCRIPT.read_text()
    return text.replace("@SHARE@", SHARE).replace("@LIBEXEC@", LIBEXEC).replace("@VERSION@", STANDIN_VERSION)


def build_gcsfuse_deb(outdir: Path) -> Path:
    """Build gcsfuse_<version>_<arch>.deb into OUTDIR with dpkg-deb; returns its path."""
    tree = outdir / "gcsfuse-standin"
    for d in ("DEBIAN", "usr/bin", SHARE.lstrip("/"), LIBEXEC.lstrip("/")):
        (tree / d).mkdir(parents=True, exist_ok=True)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    (tree / "DEBIAN/control").write_text(
        CONTROL.format(version=STANDIN_VERSION, arch=arch, maintainer=STANDIN_MAINTAINER)
    )
    binary = tree / "usr/bin/gcsfuse"
    binary.write_text(script())
    binary.chmod(0o755)
    shutil.copy2(PARAMS_FILE, tree / SHARE.lstrip("/") / "params.tsv")
    shutil.copy2(rclone_binary(), tree / LIBEXEC.lstrip("/") / "rclone")
    deb = outdir / f"gcsfuse_{STANDIN_VERSION}_{arch}.deb"
    subprocess.run(
        # uncompressed: rclone is 50 MB and the .deb only crosses a veth
        ["dpkg-deb", "--root-owner-group", "-Znone", "--build", str(tree), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


def rclone_binary() -> Path:
    """This machine's rclone (Debian's, linked against glibc only, as the guest's bookworm has)."""
    found = shutil.which("rclone")
    if found is None:
        raise RuntimeError("rclone is not installed (`bash bootstrap` installs it)")
    return Path(found)
