"""Where a version comes from, read at training time for its model card and lineage: the base model's hub id and
cached revision, its license, and the library versions. Offline (the local Hugging Face cache only) and torch-free.

None of this may fail a job: a base model without a cached card, or with a card that does not parse, simply has
no license to inherit (a warning is logged).
"""

from __future__ import annotations

import logging
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from training.params_file import read_training_params

log = logging.getLogger("ftserve.provenance")
LIBRARIES = ("ftserve", "transformers", "torch", "datasets", "tokenizers", "huggingface_hub", "peft")
_LICENSE = re.compile(r"^[A-Za-z0-9.+-]{1,64}$")
UNKNOWN_LICENSE = "other"


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cached_file(repo_id: str, filename: str, cache_dir: Path | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) else None


def cached_revision(repo_id: str, *, cache_dir: Path | None = None) -> str | None:
    """The commit hash of the cached snapshot `from_pretrained(repo_id)` loads (the one refs/main names)."""
    config = _cached_file(repo_id, "config.json", cache_dir)
    return config.parent.name if config is not None else None


def card_license(card_path: Path | None) -> str | None:
    """The `license` of a model card's front matter, when the file exists and names a well-formed one."""
    if card_path is None or not card_path.is_file():
        return None
    import yaml
    from huggingface_hub import ModelCard

    try:
        value = ModelCard.load(card_path, ignore_metadata_errors=True).data.get("license")
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        log.warning("could not read the base model's card (%s: %s); its license is not inherited",
                    type(exc).__name__, exc)
        return None
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or not _LICENSE.match(value.strip()):
        return None
    return value.strip().lower()


def base_model_info(base_model_resolved: str, model_source: str, *, cache_dir: Path | None = None
                    ) -> dict[str, Any]:
    """{"hub": the hub id it descends from (or None), "parent": "name:version" for a registered base (or None),
    "revision": the cached commit hash of a hub base, "name:version" of a registered one, "license": its card's}."""
    kind, _, rest = base_model_resolved.partition(":")
    if kind == "hub":
        return {"hub": rest, "parent": None, "revision": cached_revision(rest, cache_dir=cache_dir),
                "license": card_license(_cached_file(rest, "README.md", cache_dir))}
    # A registered version: its own training_params.json says which hub model it came from.
    parent_params = read_training_params(Path(model_source))
    parent_base = parent_params.get("base", {}) if isinstance(parent_params.get("base"), dict) else {}
    hub = parent_base.get("hub")
    return {"hub": hub if isinstance(hub, str) else None, "parent": rest, "revision": rest,
            "license": card_license(Path(model_source) / "README.md")}


def resolve_license(requested: str | None, *, default: str, base_license: str | None) -> dict[str, str]:
    """The card's license and where it came from: the job's, the setting's, the base model's card, or unknown."""
    if requested:
        return {"id": requested.lower(), "source": "job"}
    if default:
        return {"id": default.lower(), "source": "setting"}
    if base_license and base_license != UNKNOWN_LICENSE:
        return {"id": base_license, "source": "base_model"}
    return {"id": UNKNOWN_LICENSE, "source": "unknown"}
