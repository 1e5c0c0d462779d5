"""`circuits.models.load`: a pretrained model from a local folder or a hub name, with typed errors for what is
missing (a folder that does not exist or holds no model; a hub name not in the local cache while offline)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Union

from circuits.errors import InvalidOptionError, ModelNotFoundError


def load(source: Union[str, Path], **kwargs: Any) -> Any:
    """A Hugging Face causal language model that TransformerLens 4 supports, from a local folder or the hub.

    - A folder (a path that exists, or a name that can only be a path: ``./m``, ``~/m``, ``/data/m``, ``a/b/c``) is
      read offline. A Hugging Face checkpoint (``config.json`` and its weights) is read from the folder itself, with
      `kwargs` (``device``, ``device_map``, ``n_devices``, ``dtype``, ...) passed to
      ``TransformerBridge.boot_transformers``; a folder holding one ``.gguf`` file (or the file itself) is dequantised
      to float32 once and its copy kept under ``$CIRCUITS_CACHE``, as `circuits.models.bundled` does, so later
      loads read the copy (``device`` only).
    - A hub name (``gpt2``, ``org/name``) is read from the local Hugging Face cache, or downloaded where the hub can
      be reached. Offline (``HF_HUB_OFFLINE=1``) a name that is not in the cache is refused before any download.

    `ModelNotFoundError` names what is missing."""
    from transformer_lens.model_bridge import TransformerBridge

    text = str(source)
    path = Path(text).expanduser()
    if path.exists() or _looks_like_path(text):
        return _from_folder(path, kwargs)
    _check_hub_name(text)
    try:
        return TransformerBridge.boot_transformers(text, **kwargs).eval()
    except OSError as error:  # transformers' download and cache errors are OSErrors
        raise ModelNotFoundError(f"model {text!r} is not a folder, and loading it from the hub failed (local Hugging "
                                 f"Face cache: {_hub_cache()}): {type(error).__name__}: {error}") from error


def _looks_like_path(text: str) -> bool:
    """A name that cannot be a hub name ("name" or "org/name")."""
    return text.startswith((".", "~", "/")) or "\\" in text or text.count("/") > 1 or text.endswith(".gguf")


def _from_folder(path: Path, kwargs: dict[str, Any]) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    if not path.exists():
        raise ModelNotFoundError(f"model folder {str(path)!r} does not exist; expected a folder with a Hugging Face "
                                 "model (config.json and weights) or one .gguf file, or a hub name such as 'org/name'")
    os.environ["HF_HUB_OFFLINE"] = "1"  # a folder needs nothing from the hub
    if path.is_dir() and (path / "config.json").is_file():
        return TransformerBridge.boot_transformers(str(path), **kwargs).eval()
    ggufs = ([path] if path.suffix == ".gguf" and path.is_file()
             else sorted(path.glob("*.gguf")) if path.is_dir() else [])
    if len(ggufs) != 1:
        found = sorted(p.name for p in path.iterdir())[:10] if path.is_dir() else [path.name]
        raise ModelNotFoundError(f"{str(path)!r} holds no model: expected a folder with config.json (a Hugging Face "
                                 f"checkpoint) or with exactly one .gguf file; found {found}")
    device = kwargs.pop("device", None)
    if kwargs:
        raise InvalidOptionError(f"a GGUF model ({ggufs[0]}) takes only device=; got {sorted(kwargs)}")
    hf_model, tokenizer = converted_gguf(ggufs[0])
    if device is not None:
        hf_model = hf_model.to(device)
    return TransformerBridge.boot_transformers(str(ggufs[0].parent), hf_model=hf_model, tokenizer=tokenizer).eval()


def converted_gguf(gguf: Path) -> tuple[Any, Any]:
    """A GGUF file's model and tokenizer in float32, converted once and kept under ``$CIRCUITS_CACHE`` (keyed by the
    file's path, size and modification time and the library versions)."""
    from circuits import models

    gguf = gguf.resolve()
    stat = gguf.stat()
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in gguf.stem)[:48]
    blob = json.dumps([str(gguf), stat.st_size, stat.st_mtime_ns, *models._library_versions()])
    return models._converted_gguf(gguf, f"gguf-{slug}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}")


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _check_hub_name(name: str) -> None:
    """Refuse, before any download, a name that is no valid hub name, or one not in the local cache while offline."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError as error:  # not a valid repository id
        raise ModelNotFoundError(f"{name!r} is neither a folder that exists nor a valid hub name ('org/name'): "
                                 f"{error}") from None
    if not isinstance(cached, str) and _offline():
        raise ModelNotFoundError(f"model {name!r} is not a folder that exists, and as a hub name it is not in the "
                                 f"local Hugging Face cache ({_hub_cache()}) while the hub is offline "
                                 "(HF_HUB_OFFLINE=1): download it where there is network access, or give the path of "
                                 "a local folder")
