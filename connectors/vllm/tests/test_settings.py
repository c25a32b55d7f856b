"""Settings, vLLM versions and KV geometry: each refusal names what it refuses."""
from __future__ import annotations

import json

import pytest
import torch

from kvferry_vllm.compat import UnsupportedVllmError, check_version
from kvferry_vllm.geometry import Geometry, GeometryError, copy_in, copy_out, host_views, ids_tensor
from kvferry_vllm.settings import DEFAULT_DAEMON, SettingsError, load


def test_defaults():
    s = load({}, env={})
    assert (s.daemon, s.load_mode, s.load_wait_ms, s.lease_ttl_ms) == (DEFAULT_DAEMON, "async", 30_000, None)


def test_extra_config_wins_over_the_environment_which_wins_over_the_config_file(tmp_path):
    cfg = tmp_path / "mooncake.json"
    cfg.write_text(json.dumps({"metadata_server": "P2PHANDSHAKE", "listen": "127.0.0.1:6100"}))
    env = {"MOONCAKE_CONFIG_PATH": str(cfg)}
    assert load({}, env=env).daemon == "127.0.0.1:6100"
    assert load({}, env={**env, "KVFERRY_DAEMON": "127.0.0.1:6200"}).daemon == "127.0.0.1:6200"
    s = load({"kvferry_daemon": "127.0.0.1:6300"}, env={**env, "KVFERRY_DAEMON": "127.0.0.1:6200"})
    assert (s.daemon, s.daemon_from) == ("127.0.0.1:6300", "kv_connector_extra_config.kvferry_daemon")
    cfg.write_text(json.dumps({"metadata_server": "P2PHANDSHAKE"}))
    assert load({}, env=env).daemon == DEFAULT_DAEMON


@pytest.mark.parametrize("extra,env,key,fragment", [
    ({"kvferry_daemon": "localhost"}, {}, "kv_connector_extra_config.kvferry_daemon", "HOST:PORT"),
    ({}, {"KVFERRY_DAEMON": "127.0.0.1:0"}, "KVFERRY_DAEMON", "HOST:PORT"),
    ({"load_wait_ms": -1}, {}, "kv_connector_extra_config.load_wait_ms", "milliseconds from 0"),
    ({"load_wait_ms": True}, {}, "kv_connector_extra_config.load_wait_ms", "milliseconds"),
    ({}, {"KVFERRY_LOAD_MODE": "eager"}, "KVFERRY_LOAD_MODE", '"async", "layerwise"'),
    ({"lease_ttl_ms": "soon"}, {}, "kv_connector_extra_config.lease_ttl_ms", "milliseconds"),
    ({"call_timeout_s": 0}, {}, "kv_connector_extra_config.call_timeout_s", "above 0"),
    ({"kvferry_deamon": "127.0.0.1:1"}, {}, "kv_connector_extra_config.kvferry_deamon", "one of the keys"),
    ({}, {"MOONCAKE_CONFIG_PATH": "/nonexistent/mooncake.json"}, "MOONCAKE_CONFIG_PATH", "readable JSON config file"),
])
def test_bad_values_name_the_key_the_value_and_what_was_expected(extra, env, key, fragment):
    with pytest.raises(SettingsError) as e:
        load(extra, env=env)
    assert e.value.key == key and fragment in str(e.value) and key in str(e.value)


def test_a_bad_config_file_names_the_file(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text("{not json")
    with pytest.raises(SettingsError, match="bad.json"):
        load({"kvferry_config": str(cfg)}, env={})
    cfg.write_text(json.dumps({"listen": "nowhere"}))
    with pytest.raises(SettingsError, match="listen"):
        load({"kvferry_config": str(cfg)}, env={})


def test_other_connectors_keys_are_left_alone():
    assert load({"lmcache.chunk_size": 256}, env={}).daemon == DEFAULT_DAEMON


@pytest.mark.parametrize("version,ok", [("0.26.0", True), ("0.33.0", True), ("0.34.0", True), ("0.34.1rc1", True),
                                        ("0.25.1", False), ("0.35.0", False), ("0.9.2", False), ("1.0.0", False), ("dev", False)])
def test_supported_vllm_versions(version, ok):
    if ok:
        check_version(version)
    else:
        with pytest.raises(UnsupportedVllmError, match=f"vLLM {version}.*0.26 to 0.34|0.26 to 0.34.*vLLM {version}"):
            check_version(version)


def test_the_older_kv_first_layout_is_indexed_along_its_block_dimension():
    # (2, num_blocks, block_size, heads, head): K and V apart, blocks on dimension 1.
    src = torch.randn(2, 9, 4, 2, 8).to(torch.float16)
    dst = torch.zeros_like(src)
    g = Geometry.of({"l0": src}, num_blocks=9, block_size=4)
    assert (g.block_dim, g.block_shape) == (1, (2, 4, 2, 8))
    part = torch.zeros(3 * g.block_bytes, dtype=torch.uint8)
    copy_out(src, g, ids_tensor([7, 2, 5], src.device), host_views([memoryview(part.numpy())]))
    copy_in(dst, Geometry.of({"l0": dst}, 9, 4), ids_tensor([0, 1], dst.device), host_views([memoryview(part.numpy())]), 1)
    assert torch.equal(dst[:, 0], src[:, 2]) and torch.equal(dst[:, 1], src[:, 5]) and dst[:, 2:].abs().sum() == 0


def test_a_part_in_several_extents_is_copied_piece_by_piece():
    src = torch.randn(6, 2, 4, 8).to(torch.float16)
    g = Geometry.of({"l0": src}, 6, 4)
    whole = torch.zeros(2 * g.block_bytes, dtype=torch.uint8)
    # Two extents that split a block.
    a, b = memoryview(whole.numpy())[:100], memoryview(whole.numpy())[100:]
    copy_out(src, g, ids_tensor([4, 1], src.device), host_views([a, b]))
    assert torch.equal(whole.view(torch.float16).view(2, 2, 4, 8), src[[4, 1]])
    dst = torch.zeros_like(src)
    copy_in(dst, g, ids_tensor([3, 0], dst.device), host_views([a, b]), 0)
    assert torch.equal(dst[3], src[4]) and torch.equal(dst[0], src[1])


def test_geometry_refusals_name_the_difference():
    g = Geometry.of({"a": torch.zeros(4, 2, 16, 32, dtype=torch.float16)}, 4, 16)
    meta = g.describe(30, 2)
    g.check(meta)
    for key, value, fragment in [("dtype", "bfloat16", "dtype is bfloat16"), ("block_size", 32, "block_size is 32"),
                                 ("block_shape", [4, 16, 32], "block_shape is [4, 16, 32]"), ("format", "x/2", "format")]:
        with pytest.raises(GeometryError) as e:
            g.check({**meta, key: value})
        assert fragment in str(e.value)
    with pytest.raises(GeometryError, match="hybrid"):
        Geometry.of({"a": torch.zeros(4, 2, 16, 32), "b": torch.zeros(4, 1, 16, 32)}, 4, 16)


def test_runs_of_consecutive_block_ids():
    from kvferry_vllm.geometry import runs

    assert runs([3, 4, 5, 9, 1, 2]) == [(3, 3), (9, 1), (1, 2)] and runs([]) == []


def test_the_connector_refuses_parallel_workers_and_hybrid_caches_by_name(tmp_path):
    from dataclasses import replace

    from harness import configs
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

    config, kv_config = configs(tmp_path, "kv_producer", "127.0.0.1:1")
    config.parallel_config.tensor_parallel_size = 2
    with pytest.raises(SettingsError) as e:
        KVConnectorFactory.create_connector(config, KVConnectorRole.WORKER, kv_config)
    assert e.value.key == "tensor_parallel_size" and "got 2" in str(e.value)

    config, kv_config = configs(tmp_path, "kv_producer", "127.0.0.1:1")
    two_groups = replace(kv_config, kv_cache_groups=[*kv_config.kv_cache_groups, *kv_config.kv_cache_groups])
    with pytest.raises(SettingsError) as e:
        KVConnectorFactory.create_connector(config, KVConnectorRole.SCHEDULER, two_groups)
    assert e.value.key == "kv_cache_groups" and "hybrid" in str(e.value)
