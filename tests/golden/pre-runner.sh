#!/bin/bash
# The operator's own preparation: runs once per instance, before the first
# registration; its exit status becomes UD_OK or UD_FAILED.
set -euo pipefail
mkdir -p /mnt/cache
echo "instance ready: $(uname -m)"
