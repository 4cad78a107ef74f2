#!/usr/bin/env bash
# The assignment's Problem 2 entry point: DDIM faces from a noise folder with the given UNet.
#   bash scripts/hw2_2.sh NOISE_DIR OUT_DIR UNET_PT
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 NOISE_DIR OUT_DIR UNET_PT" >&2; exit 2; }
HW2RT="${HW2RT:-$(dirname "$0")/../.venv/bin/hw2rt}"
command -v "$HW2RT" >/dev/null 2>&1 || HW2RT=hw2rt
exec "$HW2RT" ddim --noise-dir "$1" --out "$2" --checkpoint "$3" --eta 0 --steps 50 \
    --backend auto --precision auto
