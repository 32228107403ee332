#!/usr/bin/env bash
# Record what `make images-cuda` built: each image's size and the engine contract check run
# inside it (imports and argument names: no GPU needed), into docs/images-cuda.md.
#   images/tools/images-cuda-report.sh VERSION BUILD_SECONDS
set -euo pipefail
version="$1"; seconds="${2:-?}"
docker="${DOCKER:-docker}"
out=docs/images-cuda.md
{
    echo "# CUDA images built from PyPI, without a container registry"
    echo
    echo "Written by \`make images-cuda\` on $(date -u '+%Y-%m-%d %H:%M UTC'), llem $version: the pytorch and"
    echo "vllm Dockerfiles on llem's local Debian base, torch's and vLLM's CUDA wheels from PyPI. Both"
    echo "builds together took ${seconds} s here (2 cores; downloads included)."
    echo
    echo "| image | what is inside | size | engine contract check inside (\`python tests/contract/checks.py ENGINE\`) |"
    echo "|---|---|---:|---|"
    for pair in pytorch-cuda:pytorch vllm-cuda:vllm; do
        image="llem/${pair%%:*}:$version"; engine="${pair##*:}"
        size=$("$docker" image inspect "$image" --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')
        inside=$("$docker" run --rm --network none -e HOME=/tmp --entrypoint python "$image" -c "
import importlib, torch, transformers
engine = '' if '$engine' == 'pytorch' else f'vllm {importlib.import_module(\"vllm\").__version__}, '
print(f'{engine}torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}')" \
            2>/dev/null | tail -1)
        check=$("$docker" run --rm --network none -e HOME=/tmp --entrypoint python \
            -v "$PWD/tests/contract:/checks:ro" "$image" /checks/checks.py "$engine" 2>&1 | tail -1)
        echo "| \`$image\` | $inside | $size | $check |"
    done
    echo
    echo "Neither image has run on a GPU here (none is lent with Docker): the check proves the CUDA"
    echo "wheels install and import, and that every argument name llem passes exists in them."
} > "$out"
cat "$out"
