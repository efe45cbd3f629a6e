"""Choosing the ring implementation, and reserving a segment's memory up front."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

import ringgate.ring as ring_module
from ringgate.errors import ConfigurationError
from ringgate.ring import Ring

_IMPORT = "import sys; sys.modules['ringgate._ring'] = None  # the extension is not built\n"


def _run(code: str, impl: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RINGGATE_IMPL"}
    if impl is not None:
        env["RINGGATE_IMPL"] = impl
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_without_the_extension_the_default_falls_back_to_python():
    proc = _run(_IMPORT + "import ringgate.ring as r; print(r.IMPL_NAME)", None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "python"


def test_forcing_native_without_the_extension_names_what_was_tried():
    proc = _run(_IMPORT + "import ringgate.ring", "native")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "RINGGATE_IMPL=native" in proc.stderr and "tried" in proc.stderr


def test_forcing_python_uses_python_even_when_native_is_built():
    proc = _run("import ringgate.ring as r; print(r.IMPL_NAME)", "python")
    assert proc.stdout.strip() == "python", proc.stderr


@pytest.fixture
def small_shm(monkeypatch):
    """A 1 MiB tmpfs standing in for a container's too-small /dev/shm (needs mount rights)."""
    mount_point = tempfile.mkdtemp(prefix="rg-small-shm-")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount_point],
                      capture_output=True).returncode != 0:
        os.rmdir(mount_point)
        pytest.skip("cannot mount a tmpfs here (not root or no CAP_SYS_ADMIN)")
    monkeypatch.setattr(ring_module, "SHM_DIR", mount_point)
    yield mount_point
    subprocess.run(["umount", mount_point], check=False)
    os.rmdir(mount_point)


def test_a_too_small_shm_is_a_configuration_error_naming_the_free_space(small_shm):
    with pytest.raises(ConfigurationError) as info:
        Ring.create("too-big-ring-0", 4 << 20)
    message = str(info.value)
    assert "RINGGATE_RING_BYTES" in message and "bytes free" in message and small_shm in message
    assert os.listdir(small_shm) == []  # nothing half-made is left behind


_AARCH64 = "import platform; platform.machine = lambda: 'aarch64'  # a weakly ordered CPU\n"


@pytest.mark.parametrize("forced", ["python", None])
def test_python_ring_refuses_a_weakly_ordered_cpu(forced):
    """The pure-Python ring reads without atomics or the flock: only x86-64's store order makes a
    committed header imply its payload. Elsewhere it is never chosen, forced or as a fallback."""
    proc = _run(_AARCH64 + _IMPORT + "import ringgate.ring", forced)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: no ring implementation can run here"), proc.stderr
    assert "x86-64's store order; this CPU is aarch64" in last and "build the native ring" in last
    if forced is None:
        assert "native (ringgate._ring:" in last


def test_native_ring_runs_on_a_weakly_ordered_cpu():
    from tests.unit.ring_helpers import native_or_skip

    native_or_skip()
    proc = _run(_AARCH64 + "import ringgate.ring as r; print(r.IMPL_NAME)", None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "native"
