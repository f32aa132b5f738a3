#!/usr/bin/env bash
# Regenerates docs/report.jpg, the README's screenshot of a real report: cats_dogs
# (../shared/data), MobileNetV2 with its real weights (../shared/models), --val-split 0.5,
# seed 0, --finetune; rendered by headless Chromium. The picture stops above the
# worst-classified images: their thumbnails are third-party photos, which this repository
# does not copy (open out/readme-report/run/report.html for the whole page).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
scripts/setup.sh >/dev/null
source scripts/env.sh
TL=target/release/tl
PY=.venv/bin/python
DATA=../shared/data/cats_dogs
WEIGHTS=../shared/models/mobilenet_v2-imagenet.safetensors
OUT=out/readme-report
for need in "$DATA" "$WEIGHTS"; do [ -e "$need" ] || { echo "make_report_image: $need not found"; exit 1; }; done
command -v chromium >/dev/null || { echo "make_report_image: needs chromium (apt-get install chromium)"; exit 1; }
export TL_BACKBONES="$OUT/backbones" TL_CACHE_DIR="$OUT/cache"
[ -f "$OUT/backbones/mobilenet_v2.json" ] || "$PY" scripts/export_backbones.py mobilenet_v2 --weights "$WEIGHTS" --cuts 1 --out "$OUT/backbones"
"$TL" train -b mobilenet_v2 "$DATA" --val-split 0.5 --seed 0 --finetune --out "$OUT/run" --force -q
"$PY" - "$OUT/run/report.html" "$OUT/report-top.html" <<'PYEOF'
import sys
html = open(sys.argv[1], encoding="utf-8").read()
cut = html.index("<h2>Worst-classified images</h2>")
open(sys.argv[2], "w", encoding="utf-8").write(html[:cut] + "</body></html>\n")
PYEOF
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1150,2400 \
    --screenshot="$OUT/report.png" "file://$ROOT/$OUT/report-top.html" 2>/dev/null
"$PY" - "$OUT/report.png" docs/report.jpg <<'PYEOF'
import sys
import numpy as np
from PIL import Image
img = Image.open(sys.argv[1]).convert("RGB")
rows = np.nonzero((np.asarray(img.convert("L")) < 250).any(axis=1))[0]
img = img.crop((0, 0, img.width, min(img.height, rows[-1] + 30)))
img = img.resize((900, round(img.height * 900 / img.width)), Image.LANCZOS)
img.save(sys.argv[2], quality=82, optimize=True)
PYEOF
echo "wrote docs/report.jpg"
