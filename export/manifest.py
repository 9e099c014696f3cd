"""``manifest.json``: what an exported folder holds, and checks that it is intact."""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from hirn.core.errors import ModelFolderError

MANIFEST_NAME = "manifest.json"
FORMAT = "hirn-onnx-graphs"
FORMAT_VERSION = 1


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tool_versions() -> dict[str, str]:
    """Versions of the packages that shape an exported graph."""
    versions = {}
    for package in ("hirn", "torch", "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_manifest(folder: Path, manifest: dict) -> Path:
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of ``folder``, after checking that it is one of ours."""
    folder = Path(folder)
    hint = "export one with: hirn-export onnx CHECKPOINT -o DIR"
    if not folder.is_dir():
        raise ModelFolderError(f"ONNX folder not found: {folder} ({hint})")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ModelFolderError(f"{folder} has no {MANIFEST_NAME}: not a hirn ONNX folder ({hint})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{path} is not valid JSON ({exc}); re-export the folder") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFolderError(f"{path} is not a hirn graph manifest; re-export the folder")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFolderError(
            f"{path} has format version {version}; this hirn reads version {FORMAT_VERSION}. "
            f"Re-export with this version ({hint}) or use the hirn that wrote it "
            f"({manifest.get('tools', {}).get('hirn', 'unknown version')})")
    return manifest


def verify_folder(folder: str | os.PathLike, graphs: list[str] | None = None) -> dict:
    """Check the graphs of ``folder`` against its manifest; return the manifest.

    Raises :class:`ModelFolderError` naming the first missing, truncated or
    altered file.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    entries = manifest.get("graphs", {})
    for name in graphs or list(entries):
        if name not in entries:
            raise ModelFolderError(f"{folder / MANIFEST_NAME} lists no graph {name!r} "
                                   f"(it has {sorted(entries)}); re-export the folder")
        entry = entries[name]
        path = folder / entry["file"]
        if not path.is_file():
            raise ModelFolderError(f"{path} is missing; re-export the folder")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ModelFolderError(f"{path} has {size} bytes, the manifest says {entry['bytes']}: "
                                   "the file is truncated or replaced; re-export the folder")
        if sha256_of(path) != entry["sha256"]:
            raise ModelFolderError(f"{path} does not match its SHA-256 in the manifest: the "
                                   "file was altered; re-export the folder")
    return manifest
