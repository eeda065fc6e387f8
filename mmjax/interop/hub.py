"""Hugging Face Hub ids wherever mmjax takes a model directory: ``resolve("openai/clip-vit-base-patch32")``
is the local snapshot folder in huggingface_hub's cache, downloaded when online; with ``HF_HUB_OFFLINE=1`` it
is only looked up in the cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``), so a machine without network uses
what an earlier run downloaded. A path that exists is returned as it is.

    from mmjax.interop import hf
    cfg, params = hf.load("openai/clip-vit-base-patch32")      # hf.load resolves through here

Needs ``huggingface_hub`` (the [hf] extra). Only the files mmjax reads are fetched (``HUB_FILES``).
"""

from __future__ import annotations

import os
import re

from mmjax.interop import InteropError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# config.json, preprocessor_config.json, tokenizer(_config).json, the weights (one file or shards)
HUB_FILES = ("*.json", "*.safetensors", "*.txt", "*.model")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def is_hub_id(source: str) -> bool:
    """``org/name`` that is not a path on this machine."""
    return not os.path.exists(source) and bool(HUB_ID.fullmatch(source))


def resolve(source: str) -> str:
    """``source`` if it is a path on this machine, else the local snapshot of the Hub model it names; an
    ``InteropError`` line when neither (not in the offline cache, no such repository, no network)."""
    if os.path.exists(source) or not HUB_ID.fullmatch(source):
        return source  # a directory (or a missing path: the caller's own error names it)
    try:
        from huggingface_hub import snapshot_download  # lazy: the optional [hf] extra, for Hub ids only
    except ImportError:
        raise InteropError(
            f"{source!r} looks like a Hugging Face Hub id, and huggingface_hub is not installed "
            "(pip install -e '.[hf]'); or pass a local directory"
        ) from None
    # read at call time, so that a cache set after huggingface_hub was imported is used too
    cache = os.environ.get("HF_HUB_CACHE") or None
    try:
        return snapshot_download(
            source, local_files_only=offline(), allow_patterns=list(HUB_FILES), cache_dir=cache
        )
    except Exception as e:  # not in the cache, no such repository, no network, ...: all one line
        if offline():
            hint = (
                "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache (HF_HUB_CACHE / HF_HOME); "
                "download it once online"
            )
        else:
            hint = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        raise InteropError(f"{source}: cannot get this Hub model ({hint})") from None
