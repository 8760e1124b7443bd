"""Fetching adapters as a replica does: an offline Hugging Face cache and an S3-compatible store.

hf:// runs against a pre-filled huggingface_hub cache with HF_HUB_OFFLINE=1 (no network here);
s3:// against moto's server, a FAKE of S3 (S3 cannot run on these machines) reached with the
real boto3 client, credentials read from a mounted-Secret folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rayleigh_serving.adapter_fetch import AdapterFetchError, fetch_adapter
from rayleigh_serving.adapter_sources import AdapterSpec
from tests.plugins.adapter_stores import S3_ACCESS_KEY, S3_SECRET_KEY, MotoS3, make_hf_cache, write_secret
from tests.plugins.serving_stack import TINY_LORA_DIR


@pytest.fixture
def tiny_lora(tiny_model_dir: Path) -> Path:
    return TINY_LORA_DIR


@pytest.fixture
def offline_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


@pytest.fixture
def s3_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    secrets = tmp_path / "secrets"
    write_secret(secrets, "s3-creds", {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY})
    monkeypatch.setenv("RAYLEIGH_ADAPTER_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("RAYLEIGH_ADAPTER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_hf_adapter_comes_from_the_offline_cache(offline_hf: Path, tiny_lora: Path) -> None:
    commit = make_hf_cache(offline_hf, "org/tiny-lora", tiny_lora)
    path = fetch_adapter(AdapterSpec("a", "hf", "org/tiny-lora"))
    assert path.name == commit
    assert (path / "adapter_config.json").read_bytes() == (tiny_lora / "adapter_config.json").read_bytes()


def test_hf_adapter_pinned_to_a_commit_comes_from_the_offline_cache(offline_hf: Path, tiny_lora: Path) -> None:
    commit = make_hf_cache(offline_hf, "org/tiny-lora", tiny_lora)
    assert fetch_adapter(AdapterSpec("a", "hf", "org/tiny-lora", revision=commit)).name == commit


def test_hf_adapter_missing_from_the_offline_cache_says_so(offline_hf: Path) -> None:
    with pytest.raises(AdapterFetchError, match=r"'a': hf://org/absent is not in the cache .*HF_HUB_OFFLINE"):
        fetch_adapter(AdapterSpec("a", "hf", "org/absent"))


def test_hf_token_secret_that_is_not_mounted_is_named(offline_hf: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RAYLEIGH_ADAPTER_SECRETS_DIR", str(tmp_path / "none"))
    with pytest.raises(AdapterFetchError, match=r"Secret 'hf-token' is not mounted"):
        fetch_adapter(AdapterSpec("a", "hf", "org/x", secret="hf-token"))


def test_s3_adapter_is_downloaded_with_secret_credentials(moto_s3: MotoS3, s3_env: Path, tiny_lora: Path) -> None:
    moto_s3.upload_dir("fetch-test", "loras/tiny", tiny_lora)
    spec = AdapterSpec("a", "s3", "fetch-test", prefix="loras/tiny", secret="s3-creds", endpoint=moto_s3.endpoint)
    path = fetch_adapter(spec)
    assert path.is_relative_to(s3_env)
    for f in tiny_lora.iterdir():
        assert (path / f.name).read_bytes() == f.read_bytes()
    assert fetch_adapter(spec) == path  # a complete download is reused


def test_s3_prefix_without_objects_says_so(moto_s3: MotoS3, s3_env: Path, tiny_lora: Path) -> None:
    moto_s3.upload_dir("fetch-test", "loras/tiny", tiny_lora)
    spec = AdapterSpec("a", "s3", "fetch-test", prefix="loras/none", secret="s3-creds", endpoint=moto_s3.endpoint)
    with pytest.raises(AdapterFetchError, match=r"no objects under s3://fetch-test/loras/none"):
        fetch_adapter(spec)


def test_s3_secret_without_the_access_key_is_named(moto_s3: MotoS3, s3_env: Path, tmp_path: Path) -> None:
    write_secret(tmp_path / "secrets", "partial", {"AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY})
    spec = AdapterSpec("a", "s3", "fetch-test", prefix="x", secret="partial", endpoint=moto_s3.endpoint)
    with pytest.raises(AdapterFetchError, match=r"Secret 'partial' has no key 'AWS_ACCESS_KEY_ID'"):
        fetch_adapter(spec)


def test_path_adapter_without_adapter_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AdapterFetchError, match=r"holds no adapter_config.json"):
        fetch_adapter(AdapterSpec("a", "file", str(tmp_path)))
