#!/usr/bin/env bash
# One command for everything a GPU can show about rcdm (< 8 minutes on an H100/H200):
#   bash bench/gpu_check.sh [--out DIR] [--budget SECONDS] [--only PART ...]
#   bash bench/gpu_check.sh --cpu        # the same parts, tiny, on the CPU (what CI runs)
# On the project's GPU machine: source .device/env.sh && bash bench/gpu_check.sh
# Writes DIR/gpu_check.json and DIR/gpu_check.md (default DIR: runs/gpu-check-<UTC time>), rewritten
# after every part, so a check stopped or killed keeps the parts it finished.
# Order: info, then the headline figures with their time reserved (eager adm128 training img/s,
# eager forwards/s, extraction with GPU decoding), then the compiled rows (compile time reported),
# pytest -m gpu (each test recorded as it ends, cheapest first), e2e, the rest.
# Compiles go to one inductor / Triton cache in DIR/cache, shared by every part.
# Installs nothing; uses $PYTHON (default: python3 on PATH).
set -u
cd "$(dirname "$0")/.." || exit 1
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
