"""Fetching weights: Hugging Face Hub repositories (huggingface-hub) and OpenAI's public SAEs
(HTTPS with a progress callback and size/MD5 checks). Nothing here is needed offline: local
paths are used as they are, and a cached download is reused."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from .errors import ConfigError, DataError

OPENAI_SAE_BASE = "https://openaipublic.blob.core.windows.net/sparse-autoencoder"
OPENAI_LOCATIONS = ("resid_delta_attn", "resid_delta_mlp", "resid_post_attn", "resid_post_mlp")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "*.yaml", "*.bpe"]
Progress = Callable[[int, Optional[int]], None]


def cache_dir() -> Path:
    root = os.environ.get("COCOMIX_CACHE") or Path(os.environ.get("XDG_CACHE_HOME",
                                                                  Path.home() / ".cache")) / "cocomix"
    return Path(root)


def openai_sae_url(model: str, location: str, layer: int, version: str = "v5_32k") -> str:
    """The public URL of an OpenAI sparse_autoencoder ``.pt`` (``COCOMIX_OPENAI_SAE_BASE``
    overrides the host, e.g. for a mirror)."""
    if model != "gpt2-small":
        raise ConfigError(f"OpenAI released SAEs for gpt2-small only, not {model!r}")
    if location not in OPENAI_LOCATIONS:
        raise ConfigError(f"--location must be one of {', '.join(OPENAI_LOCATIONS)}")
    if not 0 <= layer < 12:
        raise ConfigError("--layer must be in 0..11 for gpt2-small")
    base = os.environ.get("COCOMIX_OPENAI_SAE_BASE", OPENAI_SAE_BASE).rstrip("/")
    return f"{base}/{model}/{location}_{version}/autoencoders/{layer}.pt"


def download(url: str, dest: Path, progress: Optional[Progress] = None, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` (atomically), checking the size against Content-Length and
    the bytes against Content-MD5 when the server sends them. An existing ``dest`` is reused."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total else None
            md5_header = response.headers.get("Content-MD5")
            md5, done = hashlib.md5(), 0
            with open(tmp, "wb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    md5.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise ConfigError(f"cannot download {url} ({reason}); check the network, or fetch the "
                          "file elsewhere and pass its path") from None
    if total is not None and done != total:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download of {url} stopped at {done} of {total} bytes; try again")
    if md5_header and base64.b64encode(md5.digest()).decode() != md5_header:
        tmp.unlink(missing_ok=True)
        raise DataError(f"checksum mismatch for {url}; try again")
    tmp.replace(dest)
    return dest


def fetch_openai_sae(model: str, location: str, layer: int,
                     progress: Optional[Progress] = None) -> Path:
    url = openai_sae_url(model, location, layer)
    return download(url, cache_dir() / "openai-sae" / model / f"{location}_v5_32k" / f"{layer}.pt",
                    progress)


def resolve_source(src: str, revision: Optional[str] = None) -> Path:
    """A local path as is; ``owner/name`` that is not a local path → a Hub snapshot (cached;
    ``HF_HUB_OFFLINE=1`` uses the cache only)."""
    path = Path(src)
    if path.exists() or not REPO_ID.match(src):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(src, revision=revision, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise ConfigError(f"{src} is not in the local Hugging Face cache and the Hub cannot be "
                          "reached (offline?); download it first or pass a local path") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ConfigError(f"cannot fetch {src} from the Hugging Face Hub: "
                          f"{str(e).splitlines()[0]}") from None


def upload(directory: str | Path, repo: str) -> str:
    """Push a checkpoint directory to a Hub model repository (created if needed)."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        info = api.upload_folder(folder_path=str(directory), repo_id=repo)
    except Exception as e:  # network, auth and API errors all end the same way
        raise ConfigError(f"upload to {repo} failed: {str(e).splitlines()[0]}") from None
    return str(getattr(info, "commit_url", repo))
