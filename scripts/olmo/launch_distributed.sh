#!/usr/bin/env bash
# The original pipeline's launcher, over scripts/launch_distributed.sh (same arguments):
#   ./scripts/olmo/launch_distributed.sh 150M 8 ./data ./outputs [overrides...]
set -euo pipefail
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../launch_distributed.sh" "$@"
