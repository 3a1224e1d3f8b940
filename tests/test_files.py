from __future__ import annotations

import os

import pytest

from pipeline.utils.files import atomic_path
from transforms.errors import InputError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_path_replaces_only_on_success(tmp_path):
    dest = tmp_path / "out" / "scan.nii.gz"
    with atomic_path(dest) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == dest.parent
        tmp.write_bytes(b"first")
    assert dest.read_bytes() == b"first"
    assert dest.stat().st_mode & 0o777 == 0o666 & ~_current_umask()

    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert dest.read_bytes() == b"first"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["scan.nii.gz"]


def test_input_error_names_file_and_problem():
    err = InputError("a/b.nii.gz", "is empty")
    assert str(err) == "a/b.nii.gz: is empty" and err.path == "a/b.nii.gz"
    assert isinstance(err, ValueError)


def test_exclusive_makes_another_process_wait_for_the_lock(tmp_path):
    import subprocess
    import sys

    from pipeline.utils.files import exclusive

    lock = tmp_path / "sub" / ".cohort.lock"
    probe = (
        "import fcntl, sys\n"
        "with open(sys.argv[1], 'a') as handle:\n"
        "    try:\n"
        "        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    except BlockingIOError:\n"
        "        sys.exit(3)\n"
    )
    with exclusive(lock):
        assert subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode == 3  # held: the other must wait
    assert subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode == 0  # released
