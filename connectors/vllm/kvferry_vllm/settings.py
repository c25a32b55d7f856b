"""The connector's settings: `kv_connector_extra_config` first, then the environment, then
the kvferry/Mooncake config file, then the defaults. A bad value is a SettingsError naming
the key, the value and what was expected (vLLM reports it when the engine starts)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

#: The daemon's client API when nothing names it (the daemon's own default `listen`).
DEFAULT_DAEMON = "127.0.0.1:50051"
#: A nonzero TCP port on a host name or IPv4/IPv6 address.
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})$")


class SettingsError(ValueError):
    """A setting holds a value the connector refuses. `key` names it."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        super().__init__(f"kvferry connector: {key}: expected {expected}, got {value!r}")
        self.key = key


@dataclass(frozen=True)
class Settings:
    #: The local daemon's client API, "HOST:PORT".
    daemon: str
    #: Where it came from (for messages): "kv_connector_extra_config.kvferry_daemon", ...
    daemon_from: str
    #: How long a consumer waits for an entry to arrive (a push in flight, a pull), ms.
    load_wait_ms: int
    #: "async": the request waits outside the batch until its KV is in (other requests run);
    #: "layerwise": it runs at once and each layer waits for its own copy (wait_for_layer_load).
    load_mode: str
    #: The lease of a saved entry (how long the daemon keeps it unconsumed), ms; None: the daemon's.
    lease_ttl_ms: int | None
    #: The deadline of each call to the daemon, s.
    call_timeout_s: float


def _int_ms(key: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SettingsError(key, value, f"an integer number of milliseconds from {lo} to {hi}")
    try:
        n = int(value)
    except ValueError:
        raise SettingsError(key, value, f"an integer number of milliseconds from {lo} to {hi}") from None
    if not lo <= n <= hi:
        raise SettingsError(key, value, f"an integer number of milliseconds from {lo} to {hi}")
    return n


def _host_port(key: str, value: object) -> str:
    m = _HOST_PORT.match(value) if isinstance(value, str) else None
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise SettingsError(key, value, 'the daemon\'s client API address "HOST:PORT" (e.g. "127.0.0.1:50051")')
    return value  # type: ignore[return-value]


def _config_file_listen(path: str, key: str) -> str | None:
    """The `listen` of a kvferry/Mooncake JSON config file (the daemon's client API), if set."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as err:
        raise SettingsError(key, path, f"a readable JSON config file ({err.strerror})") from None
    except ValueError as err:
        raise SettingsError(key, path, f"a JSON config file ({err})") from None
    if not isinstance(doc, dict):
        raise SettingsError(key, path, "a JSON config file holding an object")
    listen = doc.get("listen")
    if listen is None:
        return None
    if isinstance(listen, int) or (isinstance(listen, str) and listen.isdigit()):
        return _host_port(f"{path}: listen", f"127.0.0.1:{listen}")
    return _host_port(f"{path}: listen", listen)


def load(extra: Mapping[str, Any] | None, env: Mapping[str, str] = os.environ) -> Settings:
    """The settings from vLLM's kv_connector_extra_config and the environment."""
    extra = dict(extra or {})
    known = {"kvferry_daemon", "kvferry_config", "load_wait_ms", "load_mode", "lease_ttl_ms", "call_timeout_s"}
    # Other keys may be another connector's (MultiConnector); a misspelt kvferry_* key is ours.
    for k in sorted(extra):
        if k.startswith("kvferry") and k not in known:
            raise SettingsError(f"kv_connector_extra_config.{k}", extra[k], f"one of the keys {', '.join(sorted(known))}")

    def pick(key: str, env_key: str) -> tuple[object, str] | None:
        if key in extra:
            return extra[key], f"kv_connector_extra_config.{key}"
        if env.get(env_key):
            return env[env_key], env_key
        return None

    daemon: str | None = None
    daemon_from = "the default"
    got = pick("kvferry_daemon", "KVFERRY_DAEMON")
    if got is not None:
        daemon, daemon_from = _host_port(got[1], got[0]), got[1]
    else:
        cfg = pick("kvferry_config", "MOONCAKE_CONFIG_PATH")
        if cfg is not None:
            if not isinstance(cfg[0], str) or not cfg[0]:
                raise SettingsError(cfg[1], cfg[0], "the path of a kvferry/Mooncake JSON config file")
            daemon = _config_file_listen(cfg[0], cfg[1])
            if daemon is not None:
                daemon_from = f"listen in {cfg[0]} ({cfg[1]})"
    if daemon is None:
        daemon = DEFAULT_DAEMON

    got = pick("load_wait_ms", "KVFERRY_LOAD_WAIT_MS")
    load_wait_ms = 30_000 if got is None else _int_ms(got[1], got[0], 0, 600_000)

    got = pick("load_mode", "KVFERRY_LOAD_MODE")
    load_mode = "async" if got is None else got[0]
    if load_mode not in ("async", "layerwise"):
        raise SettingsError(got[1] if got else "load_mode", load_mode, 'one of "async", "layerwise"')

    got = pick("lease_ttl_ms", "KVFERRY_LEASE_TTL_MS")
    lease_ttl_ms = None if got is None else _int_ms(got[1], got[0], 1, 86_400_000)

    got = pick("call_timeout_s", "KVFERRY_CALL_TIMEOUT_S")
    call_timeout_s = 30.0
    if got is not None:
        try:
            call_timeout_s = float(got[0])  # type: ignore[arg-type]
        except (TypeError, ValueError):
            call_timeout_s = -1.0
        if isinstance(got[0], bool) or not 0 < call_timeout_s <= 3600:
            raise SettingsError(got[1], got[0], "a number of seconds above 0, at most 3600")

    return Settings(daemon, daemon_from, load_wait_ms, str(load_mode), lease_ttl_ms, call_timeout_s)

