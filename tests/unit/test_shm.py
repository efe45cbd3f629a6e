"""ringgate.shm.open_private: what every /dev/shm file of ringgate is opened with."""

from __future__ import annotations

import os
import stat

import pytest

from ringgate.errors import UntrustedFileError
from ringgate.shm import open_private


def test_created_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        fd = open_private(str(tmp_path / "f"), create=True, exclusive=True)
    finally:
        os.umask(old)
    os.close(fd)
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o600


def test_exclusive_create_refuses_an_existing_file(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    os.chmod(tmp_path / "f", 0o600)
    with pytest.raises(FileExistsError):
        open_private(str(tmp_path / "f"), create=True, exclusive=True)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o700 | 0o001])
def test_group_or_other_bits_are_refused(tmp_path, mode):
    (tmp_path / "f").write_bytes(b"x")
    os.chmod(tmp_path / "f", mode)
    with pytest.raises(UntrustedFileError, match=f"{tmp_path / 'f'}: its mode is {mode:04o}"):
        open_private(str(tmp_path / "f"))


def test_symlink_is_refused_even_when_creating(tmp_path):
    (tmp_path / "target").write_bytes(b"keep")
    os.chmod(tmp_path / "target", 0o600)
    os.symlink(tmp_path / "target", tmp_path / "link")
    with pytest.raises(UntrustedFileError, match="symbolic link"):
        open_private(str(tmp_path / "link"), create=True)
    assert (tmp_path / "target").read_bytes() == b"keep"


def test_a_directory_is_refused(tmp_path):
    with pytest.raises((UntrustedFileError, IsADirectoryError)):
        open_private(str(tmp_path))
