"""The vLLM versions this connector speaks to, and the few names it takes from vLLM.

vLLM's connector API (KVConnectorBase_V1 with the 3-argument constructor, a `None` from
get_num_new_matched_tokens, get_block_ids_with_load_errors, KVCacheBlocks'
get_unhashed_block_ids) is the same from 0.26 to 0.34 (the tests run against 0.26.0 and 0.33.0;
0.34.0 was read, not run: it cannot be installed from PyPI); older releases differ (a 2-argument
constructor) and newer ones are unknown. Importing this module with another vLLM raises
UnsupportedVllmError saying which versions work."""
from __future__ import annotations

import re

#: [lowest, highest) release tested or read against (README of connectors/vllm).
SUPPORTED = ((0, 26), (0, 35))
SUPPORTED_TEXT = "vLLM 0.26 to 0.34"


class UnsupportedVllmError(ImportError):
    pass


def release(version: str) -> tuple[int, int] | None:
    m = re.match(r"^(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_version(version: str) -> None:
    got = release(version)
    if got is None or not SUPPORTED[0] <= got < SUPPORTED[1]:
        raise UnsupportedVllmError(
            f"kvferry_vllm supports {SUPPORTED_TEXT}; this is vLLM {version} "
            "(its KV connector API differs: install a supported vLLM, or a kvferry_vllm made for this one)"
        )


try:
    import vllm
except ImportError as err:  # pragma: no cover - the package's requirement
    raise UnsupportedVllmError(f"kvferry_vllm needs vLLM ({SUPPORTED_TEXT}): {err}") from err

check_version(getattr(vllm, "__version__", "unknown"))

from vllm.distributed.kv_transfer.kv_connector.v1.base import (  # noqa: E402
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.v1.request import RequestStatus  # noqa: E402

__all__ = [
    "KVConnectorBase_V1", "KVConnectorMetadata", "KVConnectorRole", "RequestStatus",
    "UnsupportedVllmError", "check_version", "SUPPORTED_TEXT",
]
