"""Opening ringgate's files in /dev/shm without trusting what another local user put there.

/dev/shm is writable by every user. A ring segment, the metrics segment or a lock file found
there may have been made by someone else: a segment pre-created 0666 by another user would be
adopted (its capacity, its positions, its records), a symlink would redirect a truncate or an
fallocate to any file we can write, and a lock file anyone can open can be flock'ed by anyone,
stalling our producers or consumer for as long as they like.

So every such file is opened here: with O_NOFOLLOW (a symlink is ELOOP, never followed), created
0600 with O_EXCL when we mean to create it, and, once open, checked on the descriptor itself
(fstat, so nothing can swap the file between the check and the use): a regular file, owned by
the user we run as, with no group or other permission bits. Anything else is refused before a
byte of it is read or written, with an UntrustedFileError naming the path; `ringgate serve`
turns that into exit 1.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import UntrustedFileError

PRIVATE_MODE = 0o600


def open_private(path: str, *, create: bool = False, exclusive: bool = False) -> int:
    """Open `path` read-write and return the descriptor, or raise UntrustedFileError.

    `create`: create it (0600) when missing; `exclusive`: it must not exist yet (O_EXCL), so what
    we get is certainly the file we made. FileNotFoundError / FileExistsError pass through.
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    if create:
        flags |= os.O_CREAT | (os.O_EXCL if exclusive else 0)
    try:
        fd = os.open(path, flags, PRIVATE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedFileError(_refusal(path, "it is a symbolic link")) from None
        raise
    try:
        check_private(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_segment(path: str, size: int) -> None:
    """A fresh, zeroed segment of `size` bytes, 0600: one of ours left by a crashed run is reused,
    zeroed; one we did not make is refused (UntrustedFileError) before it is truncated, since it
    may be a symlink to any file of ours."""
    try:
        fd = open_private(path, create=True, exclusive=True)
    except FileExistsError:
        fd = open_private(path)
        os.ftruncate(fd, 0)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def check_private(fd: int, path: str) -> None:
    """UntrustedFileError unless `fd` is a regular file of ours that nobody else may open."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedFileError(_refusal(path, "it is not a regular file"))
    if st.st_uid != os.geteuid():
        raise UntrustedFileError(_refusal(path, f"it is owned by uid {st.st_uid}, not by uid {os.geteuid()} "
                                                "that ringgate runs as"))
    if st.st_mode & 0o077:
        raise UntrustedFileError(_refusal(path, f"its mode is {stat.S_IMODE(st.st_mode):04o}: group or other "
                                                "users may open it (ringgate's files are 0600)"))


def _refusal(path: str, why: str) -> str:
    return (
        f"refusing {path}: {why}; another local user may have made it, so ringgate neither reads "
        "nor changes it. Remove it (after checking what it is) and start again"
    )
