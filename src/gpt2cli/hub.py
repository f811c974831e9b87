"""Hugging Face hub names (`gpt2`, `gpt2-xl`, `owner/name`) to a local snapshot.

Everything goes through huggingface_hub, so its cache, `HF_HOME`,
`HF_HUB_OFFLINE`, `HF_TOKEN` and `hf auth login` work as users know them.
Only config.json and safetensors weights are fetched (model.safetensors, or
the shard index and then the shards it names, from the same commit): never
a pickle. The import is lazy: only a hub name pays for it.
"""

from __future__ import annotations

from pathlib import Path

from gpt2cli.errors import UserError

WANTED = ["config.json", "model.safetensors", "model.safetensors.index.json"]


def download(name: str, flag: str = "--init-from") -> tuple[Path, str]:
    """(snapshot folder, commit hash) of hub model `name`, from the cache or the hub."""
    from gpt2cli.hf_shards import INDEX, shard_names

    folder = _snapshot(name, flag, WANTED)
    commit = folder.name
    if not (folder / "model.safetensors").is_file() and (folder / INDEX).is_file():
        # Sharded weights: the shards the index names, pinned to the index's commit.
        folder = _snapshot(name, flag, shard_names(folder / INDEX), revision=commit)
    return folder, commit


def _snapshot(name: str, flag: str, patterns: list[str], revision: str | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id=name, allow_patterns=patterns, revision=revision))
    except GatedRepoError:
        raise UserError(
            f"{flag} {name}: a gated hub model; accept its terms on the hub and log in (`hf auth login` or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"{flag} {name}: no such local path, and no such model on the hub (or it is private: log in with "
            "`hf auth login` or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"{flag} {name}: the hub model has no {revision or 'main'} revision") from None
    except LocalEntryNotFoundError:
        raise UserError(
            f"{flag} {name}: not in the Hugging Face cache and the hub cannot be reached (offline or "
            "HF_HUB_OFFLINE=1); connect once to download it, or point --init-from at a local directory "
            "holding config.json and model.safetensors"
        ) from None
    except HFValidationError:
        raise UserError(f"{flag} {name}: no such file or directory, nor a valid hub model name") from None
    except OSError as err:  # the hub answered with an error, or the cache is not writable
        raise UserError(f"{flag} {name}: could not fetch it from the hub ({err.__class__.__name__}: {err})") from None
