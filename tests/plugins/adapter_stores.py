"""Where tests keep LoRA adapters like users do: a Hugging Face cache and an S3-compatible store.

- `make_hf_cache(hf_home, repo_id, src)`: a huggingface_hub cache (the layout `snapshot_download`
  writes: blobs/, refs/main, snapshots/<commit>/) holding `src`'s files, so that hf:// adapters
  load with HF_HUB_OFFLINE=1 and no network (there is none here).
- `moto_s3`: a local S3-compatible server, moto's (`moto[server]`). This is a FAKE of AWS S3, used
  because S3 cannot run on these machines; the client side (boto3, listing, downloads, path-style
  addressing, credentials) is the real one a replica runs against MinIO or AWS.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.plugins.common import free_port

# Credentials the fake store accepts (moto accepts any); tests put them in a "Secret" folder.
S3_ACCESS_KEY = "rayleigh-test-access"
S3_SECRET_KEY = "rayleigh-test-secret"


def make_hf_cache(hf_home: Path, repo_id: str, src: Path, *, ref: str = "main") -> str:
    """Put `src`'s files into `hf_home`/hub as revision `ref` of model `repo_id`; returns the commit."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    commit = hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for f in files:
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit


def write_secret(root: Path, name: str, data: dict[str, str]) -> Path:
    """A mounted Secret as the kubelet writes it: one file per key under root/name/."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in data.items():
        (folder / key).write_text(value)
    return folder


@dataclass
class MotoS3:
    endpoint: str
    proc: subprocess.Popen[bytes]

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            region_name="us-east-1",
        )

    def upload_dir(self, bucket: str, prefix: str, src: Path) -> None:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            client.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(src)}")


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """A local S3-compatible server (moto: a fake of AWS S3, which cannot run here)."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        pytest.fail("moto_server not found: install the dev extra (pip install 'moto[server]')")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield MotoS3(endpoint, proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
