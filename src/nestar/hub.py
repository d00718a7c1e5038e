"""Hugging Face Hub interop through `huggingface_hub` (optional extra: `pip install 'nestar[hub]'`).

A Hub repository holds what `Pipeline.save_pretrained` writes: `model.safetensors`, `config.json`
and a generated `README.md` model card. `Pipeline.from_pretrained("owner/repo")` resolves the id
with `snapshot_download`, which reads the local Hub cache first; with `HF_HUB_OFFLINE=1` it never
touches the network and a repo missing from the cache is a one-line CheckpointError. Lookup order
in from_pretrained: an existing local path, then a shipped model name, then a Hub id.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Optional

from nestar.serialization import CheckpointError

# owner/name[@revision]: the Hub's repo-id characters; exactly one slash, no leading dot or slash.
_REPO_ID = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]{1,200}))?$"
)
FILES = ["model.safetensors", "config.json", "README.md"]
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of boolean environment variables


class HubError(CheckpointError):
    """A Hub repo id could not be resolved (not installed, not cached offline, not found, no network)."""


def parse_repo_id(text: str) -> Optional[tuple[str, Optional[str]]]:
    """'owner/repo' or 'owner/repo@revision' -> (repo_id, revision); None if `text` is not of that form."""
    m = _REPO_ID.match(str(text))
    if not m or ".." in m.group("repo"):
        return None
    return m.group("repo"), m.group("rev")


def offline() -> bool:
    """HF_HUB_OFFLINE, read at call time (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def cache_dir() -> Optional[str]:
    """HF_HUB_CACHE, else $HF_HOME/hub, else None (huggingface_hub's default, ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _import_hub():
    try:
        import huggingface_hub
    except ImportError as e:
        raise HubError("huggingface_hub is not installed: pip install 'nestar[hub]'") from e
    return huggingface_hub


def download(spec: str) -> Path:
    """The local snapshot folder of Hub repo `spec` ('owner/repo[@revision]'), from the cache when there."""
    parsed = parse_repo_id(spec)
    if parsed is None:
        raise HubError(f"{spec!r} is not a Hugging Face Hub repo id (owner/name[@revision])")
    repo_id, revision = parsed
    where = f"no local path {spec!r}; as a Hugging Face Hub repo id"
    try:
        hub = _import_hub()
    except HubError as e:
        raise HubError(f"{where}: {e}") from None
    from huggingface_hub import errors

    cache = cache_dir() or "the default Hub cache"
    try:
        path = hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir(),
            local_files_only=offline(),
            allow_patterns=FILES,
            library_name="nestar",
        )
    except errors.LocalEntryNotFoundError:
        why = (
            "HF_HUB_OFFLINE=1 forbids downloading it"
            if offline()
            else "it could not be downloaded (no connection to the Hub?)"
        )
        raise HubError(
            f"{where}: {repo_id} is not in the local cache ({cache}) and {why}; download it once "
            f"online (`hf download {repo_id}`), or pass a local directory"
        ) from None
    except errors.RepositoryNotFoundError:
        raise HubError(
            f"{where}: there is no repo {repo_id} on the Hub (or it is private or gated: "
            f"log in with `hf auth login`)"
        ) from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{where}: repo {repo_id} has no revision {revision!r}") from None
    except (errors.HfHubHTTPError, OSError) as e:
        raise HubError(f"{where}: downloading {repo_id} failed ({type(e).__name__}: {e})") from None
    return Path(path)


def push_to_hub(
    pipe,
    repo_id: str,
    *,
    private: bool = False,
    token: Optional[str] = None,
    commit_message: str = "Upload nestar model",
) -> str:
    """Upload `pipe.save_pretrained(...)` (weights, config, model card) to `repo_id`; returns the commit URL."""
    hub = _import_hub()
    if parse_repo_id(repo_id) is None or "@" in repo_id:
        raise HubError(f"{repo_id!r} is not a Hugging Face Hub repo id (owner/name)")
    api = hub.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nestar-push-") as tmp:
        pipe.save_pretrained(tmp, repo_id=repo_id)
        return str(
            api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
        )
