"""Nothing in /dev/shm is trusted (DESIGN §10): a ring segment, the metrics or rate-limit segment or a lock file
that another user owns, that group or others may open, or that is a symlink, is refused at start:
`ringgate serve` exits 1 naming it, and neither reads nor changes it."""

from __future__ import annotations

import os
import stat

import pytest

FOREIGN_UID = 65534  # nobody


def _target(instance: str, which: str) -> str:
    return {
        "ring segment": f"/dev/shm/{instance}-ring-0",
        "ring consumer lock": f"/dev/shm/{instance}-ring-0.consumer.lock",
        "ring producer lock": f"/dev/shm/{instance}-ring-0.producer.lock",
        "metrics segment": f"/dev/shm/{instance}-metrics",
        "rate-limit segment": f"/dev/shm/{instance}-ratelimit",
        "instance lock": f"/dev/shm/{instance}.lock",
    }[which]


def _snapshot(path: str) -> tuple:
    st = os.lstat(path)
    with open(path, "rb") as f:
        return st.st_uid, stat.S_IMODE(st.st_mode), st.st_size, f.read()


@pytest.mark.parametrize("which", ["ring segment", "ring consumer lock", "ring producer lock", "metrics segment",
                                   "rate-limit segment", "instance lock"])
@pytest.mark.parametrize("how", ["foreign-owned", "group-writable", "symlink"])
def test_untrusted_file_is_refused_and_untouched(make_gateway, tmp_path, which, how):
    if how == "foreign-owned" and os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    gw = make_gateway(start=False, RATE_LIMIT="100/s")  # every segment is made, and unmade on a refusal
    path = _target(gw.instance, which)
    content = os.urandom(4096)
    planted = str(tmp_path / "victim") if how == "symlink" else path
    with open(planted, "wb") as f:
        f.write(content)
    os.chmod(planted, 0o660 if how == "group-writable" else 0o600)
    if how == "foreign-owned":
        os.chown(planted, FOREIGN_UID, FOREIGN_UID)
    if how == "symlink":
        os.symlink(planted, path)  # e.g. at a file of ours that a truncate would destroy
    before = _snapshot(planted)
    try:
        gw.start(wait_ready=False)
        code = gw.proc.wait(60)
        log = gw.log()
        assert code == 1, log
        assert path in log, log
        assert "Traceback" not in log, log
        assert _snapshot(planted) == before
        if how == "symlink":
            assert os.readlink(path) == planted
        # nothing of ours was left behind either, and nothing of the instance was started
        left = sorted(p for p in os.listdir("/dev/shm") if p.startswith(gw.instance))
        assert left == [os.path.basename(path)], left
    finally:
        os.unlink(path)
