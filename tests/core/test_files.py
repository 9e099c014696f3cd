"""hirn.core.files: atomic writes (every package writes files through them)."""

import os
import stat

import pytest

from hirn.core.files import atomic_file, atomic_path, atomic_write_text


def test_atomic_file_replaces_only_on_success_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    with atomic_file(target) as f:  # the folder is made
        f.write(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and os.listdir(target.parent) == ["file.bin"]


def test_a_finished_file_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}\n")
    finally:
        os.umask(umask)
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_atomic_path_for_writers_that_take_a_file_name(tmp_path):
    target = tmp_path / "lib.so"
    with atomic_path(target, suffix=".so") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".lib.so.")
        assert tmp.suffix == ".so" and not target.exists()
        tmp.write_bytes(b"built")
    assert target.read_bytes() == b"built"
    with pytest.raises(OSError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise OSError("the compiler failed")
    assert target.read_bytes() == b"built" and os.listdir(tmp_path) == ["lib.so"]
