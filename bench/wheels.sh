#!/usr/bin/env bash
# Download, here (where pip reaches an index), the wheels a GPU machine without a package index lacks for
# bench/gpu.sh: Python 3.12, manylinux x86-64, no dependencies resolved (each needed one is named below,
# at the version this checkout's requirements use where they pin one). Then carry the folder over and run
#   bash bench/gpu.sh --wheels wheels/
#
#   bash bench/wheels.sh [DIR]     (default DIR: wheels/, which .gitignore keeps out of git)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-wheels}
# what the GPU image lacks (see README, "Checking the GPU paths"): open_clip and its tokenizer's needs,
# diskcache (scores cache, job store), webdataset, plotly, gradio with the parts of its stack not there;
# each at the version this machine's python runs (the versions the tests pass with), else the newest
PACKAGES=(
  open_clip_torch ftfy wcwidth timm diskcache webdataset braceexpand plotly
  gradio gradio_client hf-gradio fastapi starlette uvicorn pydantic pydantic-core annotated-types
  typing-inspection opentelemetry-api importlib-metadata orjson pydub python-multipart pytz safehttpx
  semantic-version tomlkit groovy brotli
)
pinned() {  # NAME==VERSION as installed here, or NAME
  local v
  v=$(python3 -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p')
  echo "$1${v:+==$v}"
}
PLATFORMS=()
for n in 2_28 2_27 2_17 2_5; do PLATFORMS+=(--platform "manylinux_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
mkdir -p "$DIR"
for p in "${PACKAGES[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$DIR" "$(pinned "$p")"
done
ls "$DIR"
