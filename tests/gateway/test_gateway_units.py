"""Pure pieces of the gateway: bucket math, client address, key store, config validation, RESP,
and the `rayleigh keys` commands. No servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from rayleigh_gateway.cli import keys as keys_cli
from rayleigh_gateway.keys import KeyStore, KeyStoreError, load_keys, save_keys
from rayleigh_gateway.policy import (
    address_allowed,
    client_address,
    estimate_tokens,
    format_reset,
    parse_networks,
    usage_from_json,
)
from rayleigh_gateway.ratelimit import Bucket, take_local
from rayleigh_gateway.resp import _Incomplete, encode_command, parse_reply
from rayleigh_gateway.routes import ConfigError, load_config, parse_config, served_routes

TRUSTED = parse_networks(["10.0.0.0/8", "fd00::/8"])

# ---------------------------------------------------------------- token buckets


def test_bucket_admits_burst_then_refuses_with_wait() -> None:
    state: dict[str, tuple[float, float]] = {}
    bucket = Bucket("b", 60, False)  # 1 per second
    results = [take_local(state, 0.0, [bucket], [1])[0] for _ in range(61)]
    assert results == [True] * 60 + [False]
    ok, wait, _ = take_local(state, 0.0, [bucket], [1])
    assert not ok and wait == 1000


def test_bucket_refills_at_its_rate() -> None:
    state: dict[str, tuple[float, float]] = {}
    bucket = Bucket("b", 60, False)
    for _ in range(60):
        take_local(state, 0.0, [bucket], [1])
    assert take_local(state, 1000.0, [bucket], [1])[0]
    assert not take_local(state, 1000.0, [bucket], [1])[0]


def test_buckets_are_all_or_nothing() -> None:
    state: dict[str, tuple[float, float]] = {}
    requests, tokens = Bucket("r", 100, False), Bucket("t", 50, True)
    ok, _, _ = take_local(state, 0.0, [requests, tokens], [1, 60])
    assert not ok
    assert "r" not in state  # nothing was taken from the request bucket


def test_cost_above_capacity_never_fits() -> None:
    ok, wait, _ = take_local({}, 0.0, [Bucket("t", 100, True)], [101])
    assert not ok and wait == -1


@given(
    per_minute=st.integers(1, 1000),
    times=st.lists(st.floats(0, 120_000, allow_nan=False), min_size=1, max_size=200),
)
def test_bucket_never_admits_more_than_burst_plus_rate(per_minute: int, times: list[float]) -> None:
    state: dict[str, tuple[float, float]] = {}
    bucket = Bucket("b", per_minute, False)
    times = sorted(times)
    admitted = sum(take_local(state, t, [bucket], [1])[0] for t in times)
    assert admitted <= per_minute + per_minute * (times[-1] - times[0]) / 60_000 + 1e-9


# ---------------------------------------------------------------- client address and allow-lists


def test_forwarded_for_from_untrusted_peer_is_ignored() -> None:
    assert client_address("203.0.113.9", "10.1.1.1", TRUSTED) == "203.0.113.9"


def test_forwarded_for_through_trusted_proxies_takes_rightmost_untrusted_hop() -> None:
    assert client_address("10.0.0.1", "198.51.100.7, 203.0.113.5, 10.0.0.2", TRUSTED) == "203.0.113.5"


def test_forwarded_for_with_garbage_hop_yields_unparseable_address() -> None:
    addr = client_address("10.0.0.1", "not-an-ip", TRUSTED)
    assert not address_allowed(addr, parse_networks(["0.0.0.0/0"]))


def test_ipv4_mapped_ipv6_peer_matches_ipv4_cidr() -> None:
    assert address_allowed("::ffff:192.0.2.1", parse_networks(["192.0.2.0/24"]))


def test_ipv6_address_in_ipv6_cidr() -> None:
    nets = parse_networks(["2001:db8::/32"])
    assert address_allowed("2001:db8::1", nets) and not address_allowed("2001:db9::1", nets)


# ---------------------------------------------------------------- estimates and headers


def test_estimate_adds_max_tokens_or_default() -> None:
    assert estimate_tokens(400, 100, 512, False) == 201
    assert estimate_tokens(400, None, 512, False) == 613
    assert estimate_tokens(400, 100, 512, True) == 101


def test_reset_durations_are_openai_style() -> None:
    assert [format_reset(x) for x in (20.2, 1500, 360_000)] == ["21ms", "1.5s", "6m0s"]


def test_usage_is_read_without_full_parse() -> None:
    body = b'{"choices":[],"usage":{"prompt_tokens":12,"total_tokens":20,"completion_tokens":8}}'
    assert usage_from_json(body) == (12, 8)
    assert usage_from_json(b'{"choices":[]}') is None


# ---------------------------------------------------------------- keys


def test_key_store_keeps_only_hashes(tmp_path: Path) -> None:
    store = KeyStore.new()
    key, record = store.create("team-a", models=["m"])
    save_keys(store, tmp_path / "keys.yaml")
    text = (tmp_path / "keys.yaml").read_text()
    assert key not in text and key.split("_", 2)[2] not in text
    loaded = load_keys(tmp_path / "keys.yaml")
    assert loaded.lookup(key) == record
    assert (tmp_path / "keys.yaml").stat().st_mode & 0o077 == 0


def test_key_lookup_rejects_other_secret_with_same_id() -> None:
    store = KeyStore.new()
    key, _ = store.create("a")
    prefix, key_id, _ = key.split("_", 2)
    assert store.lookup(f"{prefix}_{key_id}_guess") is None


def test_key_file_with_bad_hash_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump({"salt": "00" * 32, "keys": [{"id": "a", "hash": "zz"}]}))
    with pytest.raises(KeyStoreError, match=r"keys\[0\]\.hash"):
        load_keys(path)


def test_keys_cli_create_list_revoke(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.yaml")
    runner = CliRunner()
    created = runner.invoke(
        keys_cli, ["create", "--file", path, "--owner", "ana", "--model", "m1", "--rpm", "5", "--json"]
    )
    assert created.exit_code == 0, created.output
    info = json.loads(created.output)
    assert info["key"].startswith("rk_") and info["limits"] == {"requestsPerMinute": 5}
    listed = runner.invoke(keys_cli, ["list", "--file", path, "--json"])
    assert [k["id"] for k in json.loads(listed.output)] == [info["id"]]
    assert info["key"] not in listed.output
    revoked = runner.invoke(keys_cli, ["revoke", "--file", path, info["id"]])
    assert revoked.exit_code == 0
    assert load_keys(path).lookup(info["key"]).revoked  # type: ignore[union-attr]


def test_keys_cli_revoke_unknown_id_fails_clearly(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.yaml")
    CliRunner().invoke(keys_cli, ["create", "--file", path, "--owner", "x"])
    result = CliRunner().invoke(keys_cli, ["revoke", "--file", path, "nope"])
    assert result.exit_code != 0 and "no key with id 'nope'" in result.output


# ---------------------------------------------------------------- route config


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"routes\.0\.allowedCIDRs|routes\.0\.allowed_cidrs"):
        parse_config(
            {"routes": [{"name": "a", "backend": "http://x", "models": ["m"], "allowedCIDRs": ["10.0.0.300/8"]}]}
        )


def test_config_with_a_model_on_two_routes_is_valid_and_serves_one() -> None:
    route = {"backend": "http://x", "models": ["m"]}
    config = parse_config({"routes": [{"name": "b", **route}, {"name": "a", **route}]})
    served, dropped = served_routes(config.routes)  # no createdAt: ties by namespace/name
    assert [r.name for r in served] == ["a"] and [c.route.name for c in dropped] == ["b"]


def test_config_reads_camel_case_yaml_and_json(tmp_path: Path) -> None:
    data = {
        "trustedProxies": ["10.0.0.0/8"],
        "routes": [
            {
                "name": "tiny",
                "backend": "http://tiny-head.default.svc:8000/",
                "models": ["tiny-qwen", "tiny-lora"],
                "rateLimits": {"requestsPerMinute": 60, "modelTokensPerMinute": 1000, "failMode": "open"},
            }
        ],
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "r.json").write_text(json.dumps(data))
    for name in ("r.yaml", "r.json"):
        config = load_config(tmp_path / name)
        route = config.routes[0]
        assert route.backend == "http://tiny-head.default.svc:8000"
        assert route.rate_limits.fail_mode == "open" and route.public is False
        assert route.auth.api_keys is True


def test_config_directory_merges_gateway_settings_and_one_file_per_route(tmp_path: Path) -> None:
    """The operator's aggregated routes ConfigMap, mounted as a directory: one key per model."""
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump({"trustedProxies": ["10.0.0.0/8"]}))
    (tmp_path / "default_tiny.json").write_text(
        json.dumps({"name": "tiny", "namespace": "default", "backend": "http://a:8000", "models": ["tiny-qwen"]})
    )
    (tmp_path / "llm_qwen.json").write_text(
        json.dumps({"name": "qwen", "namespace": "llm", "backend": "http://b:8000", "models": ["qwen", "sql"]})
    )
    (tmp_path / "..data").mkdir()  # a ConfigMap volume's hidden bookkeeping is ignored
    config = load_config(tmp_path)
    assert [r.name for r in config.routes] == ["tiny", "qwen"]
    assert config.routes[1].models == ["qwen", "sql"]
    assert [str(n) for n in config.trusted_proxies] == ["10.0.0.0/8"]


def test_config_directory_change_is_detected_when_a_route_file_appears(tmp_path: Path) -> None:
    from rayleigh_gateway.app import _stat_sig

    (tmp_path / "gateway.yaml").write_text("{}\n")
    before = _stat_sig(str(tmp_path))
    (tmp_path / "default_tiny.json").write_text(
        json.dumps({"name": "tiny", "backend": "http://a:8000", "models": ["tiny-qwen"]})
    )
    assert _stat_sig(str(tmp_path)) != before
    assert [r.name for r in load_config(tmp_path).routes] == ["tiny"]


def test_config_directory_names_the_bad_file(tmp_path: Path) -> None:
    (tmp_path / "default_tiny.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"default_tiny\.json: expected a mapping"):
        load_config(tmp_path)


# ---------------------------------------------------------------- RESP


def test_resp_parses_nested_arrays_and_waits_for_more_bytes() -> None:
    reply = b"*3\r\n:1\r\n$3\r\nabc\r\n*1\r\n:-5\r\n"
    assert parse_reply(reply, 0) == ([1, b"abc", [-5]], len(reply))
    with pytest.raises(_Incomplete):
        parse_reply(reply[:-3], 0)


def test_resp_encodes_commands() -> None:
    assert encode_command("GET", "k", 5) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$1\r\n5\r\n"
