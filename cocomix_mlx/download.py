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
from .text import RemoteFile

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


DATA_PATTERNS = ["*.parquet", "*.jsonl", "*.jsonl.gz", "*.txt", "*.txt.gz"]


def _hub_error(repo: str, e: Exception) -> ConfigError:
    from huggingface_hub.errors import LocalEntryNotFoundError

    if isinstance(e, LocalEntryNotFoundError):
        return ConfigError(f"{repo} is not in the local Hugging Face cache and the Hub cannot be "
                           "reached (offline?); download it first or pass local files")
    first = " ".join(str(e).split()) or type(e).__name__
    return ConfigError(f"cannot fetch the dataset {repo} from the Hugging Face Hub: {first}; "
                       "run the command again to resume (finished files stay cached)")


def _hub_snapshot(repo: str, revision: Optional[str], patterns: list[str], dry_run=False):
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import DryRunError
    from huggingface_hub.utils import (are_progress_bars_disabled, disable_progress_bars,
                                       enable_progress_bars)

    quiet = are_progress_bars_disabled()
    disable_progress_bars()  # a bar per listing is noise; each data file shows its own
    try:
        got = snapshot_download(repo, repo_type="dataset", revision=revision,
                                allow_patterns=patterns, dry_run=dry_run)
    except DryRunError:  # the Hub cannot be reached: the caller turns to the cache
        raise
    except Exception as e:  # noqa: BLE001 (Hub and HTTP client errors alike)
        raise _hub_error(repo, e) from None
    finally:
        if not quiet:
            enable_progress_bars()
    return got if dry_run else Path(got)


class HubFile(RemoteFile):
    """A file of a Hub dataset, downloaded into the Hugging Face cache when reading reaches it."""

    def __init__(self, repo: str, name: str, revision: Optional[str], size: int):
        self.repo, self.name, self.revision, self.size = repo, name, revision, size

    def fetch(self) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(self.repo, self.name, repo_type="dataset",
                                        revision=self.revision))
        except Exception as e:  # noqa: BLE001 (the HTTP client's own errors, after its retries)
            raise _hub_error(self.repo, e) from None

    def __str__(self) -> str:
        return f"hf://datasets/{self.repo}/{self.name}" + (f"@{self.revision}"
                                                           if self.revision else "")


def dataset_configs(readme: str) -> dict[str, list[str]]:
    """``{config_name: [data file patterns]}`` from a dataset card's YAML header (its
    ``configs:`` list, the patterns of every split)."""
    import yaml

    if not readme.startswith("---"):
        return {}
    try:
        header = yaml.safe_load(readme.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return {}
    configs = {}
    for entry in header.get("configs") or [] if isinstance(header, dict) else []:
        files = entry.get("data_files", []) if isinstance(entry, dict) else []
        files = files if isinstance(files, list) else [files]
        paths = []
        for f in files:
            path = f.get("path") if isinstance(f, dict) else f
            paths += path if isinstance(path, list) else [path]
        if isinstance(entry, dict) and entry.get("config_name"):
            configs[str(entry["config_name"])] = [str(p) for p in paths if p]
    return configs


def fetch_dataset(repo: str, subset: Optional[str] = None,
                  revision: Optional[str] = None) -> list:
    """The text files (Parquet, JSONL, text) of a Hub dataset repository, each downloaded into
    the Hugging Face cache when reading reaches it (:class:`HubFile`; resumable); with
    ``HF_HUB_OFFLINE=1``, the cached files. ``subset`` is a
    config of the dataset card (e.g. fineweb-edu's ``sample-10BT``) or else a folder of the
    repository; without it, the card's ``default`` config, or every data file."""
    if not REPO_ID.match(repo):
        raise ConfigError(f"--hf-dataset expects owner/name, not {repo!r}")
    card = _hub_snapshot(repo, revision, ["README.md"]) / "README.md"
    configs = dataset_configs(card.read_text(encoding="utf-8")) if card.exists() else {}
    if subset is not None and subset in configs:
        patterns = configs[subset]
    elif subset is not None and configs:
        raise ConfigError(f"{repo} has no subset {subset!r}; its subsets: {', '.join(configs)}")
    elif subset is not None:
        patterns = [f"{subset.strip('/')}/**/{p}" for p in DATA_PATTERNS] + \
            [f"{subset.strip('/')}/{p}" for p in DATA_PATTERNS]
    else:
        patterns = configs.get("default", DATA_PATTERNS)
    from fnmatch import fnmatch

    def wanted(name: str) -> bool:
        return any(fnmatch(name.rsplit("/", 1)[-1], d) for d in DATA_PATTERNS) and \
            any(fnmatch(name, q) for q in patterns)

    from huggingface_hub.errors import DryRunError

    try:  # online: list the files, download each when it is read (--max-tokens reads fewer)
        infos = _hub_snapshot(repo, revision, patterns, dry_run=True)
        files = [HubFile(repo, i.filename, revision, i.file_size or 0)
                 for i in sorted(infos, key=lambda i: i.filename) if wanted(i.filename)]
    except DryRunError:  # offline: what the cache holds
        root = _hub_snapshot(repo, revision, patterns)
        files = sorted(p for p in root.rglob("*")
                       if p.is_file() and wanted(str(p.relative_to(root))))
    if not files:
        raise DataError(f"no data files (.parquet, .jsonl, .txt) in {repo}"
                        f"{f' subset {subset}' if subset else ''}")
    return files


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
