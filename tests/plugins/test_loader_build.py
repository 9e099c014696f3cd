"""compile_kernel_library's file handling, with a stand-in for nvcc (no CUDA needed)."""

import os
import stat

import pytest

from hirn.core.errors import KernelBuildError
from hirn.plugins.loader import LIBRARY_NAME, compile_kernel_library


def _compiler(tmp_path, body: str):
    """A script that answers ``--version`` and otherwise runs ``body`` (``$out``: -o FILE)."""
    script = tmp_path / "nvcc"
    script.write_text("#!/bin/sh\n"
                      'if [ "$1" = "--version" ]; then echo "stand-in 1.0"; exit 0; fi\n'
                      'while [ "$1" != "-o" ]; do shift; done; out="$2"\n' + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_a_library_appears_only_when_the_build_succeeds(tmp_path):
    cache = tmp_path / "cache"
    failing = _compiler(tmp_path, 'echo half > "$out"; echo "syntax error" >&2; exit 2')
    with pytest.raises(KernelBuildError, match="(?s)nvcc failed.*syntax error"):
        compile_kernel_library(("80",), nvcc=failing, cache=cache)
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # no partial library left
    working = _compiler(tmp_path, 'echo built > "$out"')
    library = compile_kernel_library(("80",), nvcc=working, cache=cache)
    assert library.name == LIBRARY_NAME and library.read_text() == "built\n"
    assert os.listdir(library.parent) == [LIBRARY_NAME]
    assert compile_kernel_library(("80",), nvcc=failing, cache=cache) == library  # cached
