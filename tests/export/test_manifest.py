"""The folder manifests (ONNX graphs, TensorRT engines): one reader, each kind's words."""

import json

import pytest

from hirn.core.errors import EngineFolderError, ModelFolderError
from hirn.export import engine_cache, manifest
from hirn.export.engine_cache import (
    read_engines_manifest,
    verify_engine_folder,
    write_engines_manifest,
)
from hirn.export.manifest import read_manifest, sha256_of, verify_folder, write_manifest

KINDS = [  # (reader, writer, format, version, error, what a damaged folder asks for)
    (read_manifest, write_manifest, manifest.FORMAT, manifest.FORMAT_VERSION, ModelFolderError,
     "re-export the folder"),
    (read_engines_manifest, write_engines_manifest, engine_cache.FORMAT,
     engine_cache.FORMAT_VERSION, EngineFolderError, "rebuild the engines"),
]


def _valid(fmt: str, version: int) -> dict:
    return {"format": fmt, "format_version": version, "model": {"mid_channels": 16},
            "graphs": {}, "tools": {"hirn": "0.0.1"}}


@pytest.mark.parametrize("read, write, fmt, version, error, fix", KINDS)
def test_a_written_manifest_reads_back_and_leaves_no_temporary(tmp_path, read, write, fmt,
                                                               version, error, fix):
    path = write(tmp_path, _valid(fmt, version))
    assert read(tmp_path) == _valid(fmt, version)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("read, write, fmt, version, error, fix", KINDS)
@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("graphs"), "lacks its 'graphs' entry"),
    (lambda m: (m.pop("graphs"), m.pop("model")), "lacks its 'model' and 'graphs' entries"),
    (lambda m: m.update(model="16"), "lacks its 'model' entry"),
    (lambda m: m.update(format="other"), "is not a hirn"),
    (lambda m: m.update(format_version=99), "has format version 99; this hirn reads"),
])
def test_a_damaged_manifest_says_what_to_do(tmp_path, read, write, fmt, version, error, fix,
                                            change, message):
    content = _valid(fmt, version)
    change(content)
    write(tmp_path, content)
    with pytest.raises(error, match=message) as caught:
        read(tmp_path)
    assert fix in str(caught.value)


@pytest.mark.parametrize("read, write, fmt, version, error, fix", KINDS)
def test_missing_folder_file_and_bad_json(tmp_path, read, write, fmt, version, error, fix):
    with pytest.raises(error, match="folder not found"):
        read(tmp_path / "absent")
    with pytest.raises(error, match="has no .*json: not a hirn"):
        read(tmp_path)
    path = write(tmp_path, _valid(fmt, version))
    path.write_text("{")
    with pytest.raises(error, match="is not valid JSON"):
        read(tmp_path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(error, match="is not a hirn"):
        read(tmp_path)


VERIFIERS = [  # (verify, writer, format, version, error, manifest file, what it lists)
    (verify_folder, write_manifest, manifest.FORMAT, manifest.FORMAT_VERSION, ModelFolderError,
     manifest.MANIFEST_NAME, "graph"),
    (verify_engine_folder, write_engines_manifest, engine_cache.FORMAT,
     engine_cache.FORMAT_VERSION, EngineFolderError, engine_cache.ENGINES_NAME, "engine"),
]


@pytest.mark.parametrize("verify, write, fmt, version, error, file, contents", VERIFIERS)
@pytest.mark.parametrize("where", ["absolute", "parent", "symlink"])
def test_a_listed_file_outside_the_folder_is_refused(tmp_path, verify, write, fmt, version,
                                                     error, file, contents, where):
    """An intact entry (right size and SHA-256) that leads out of the folder: refused before
    the file is read, naming the entry and where it leads."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours to read")
    folder = tmp_path / "folder"
    folder.mkdir()
    name = {"absolute": str(secret), "parent": "../secret", "symlink": "link"}[where]
    if where == "symlink":
        (folder / "link").symlink_to(secret)
    content = _valid(fmt, version)
    content["graphs"]["encode"] = {"file": name, "bytes": secret.stat().st_size,
                                   "sha256": sha256_of(secret)}
    write(folder, content)
    with pytest.raises(error) as caught:
        verify(folder)
    assert str(caught.value).startswith(
        f"{folder / file}: the \"file\" of {contents} 'encode' names {name!r}, which is "
        f"{secret.resolve()}: outside {folder}, so it was refused")
