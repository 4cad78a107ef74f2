#!/usr/bin/env bash
# The assignment's Problem 3 entry point: DANN labels for every image of a folder.
#   bash scripts/hw2_3.sh TARGET_IMG_DIR OUT_CSV
# The model follows the assignment's convention: 'svhn' in the path -> the SVHN model, else USPS.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 TARGET_IMG_DIR OUT_CSV" >&2; exit 2; }
HW2RT="${HW2RT:-$(dirname "$0")/../.venv/bin/hw2rt}"
command -v "$HW2RT" >/dev/null 2>&1 || HW2RT=hw2rt
exec "$HW2RT" classify --images "$1" --out "$2" --backend auto --precision auto
