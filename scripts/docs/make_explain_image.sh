#!/usr/bin/env bash
# Regenerates docs/explain.png (see docs/README.md): a run's dream of a cat, where the run
# looks in it for 'cat' and for 'dog' (tl explain), and 16 feature maps of MobileNetV2's
# features.4 for it (tl explain --maps). Needs ../shared (the run is trained on cats_dogs).
# shellcheck source=scripts/docs/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUN=out/docs-explain-run
[ -f "$RUN/config.json" ] || "$TL" train --backbone mobilenet_v2 ../shared/data/cats_dogs --val-split 0.5 --seed 0 --out "$RUN" -q >/dev/null
"$TL" dream --run "$RUN" --class cat -o "$T/cat.png" -q >/dev/null
"$TL" explain --run "$RUN" "$T/cat.png" --class cat,dog -o "$T/ex" -q >/dev/null
"$TL" explain --backbone mobilenet_v2 "$T/cat.png" --maps --layer features.4 --channels 16 -o "$T/maps" -q >/dev/null
p() { "$TL" predict --run "$RUN" "$1" --json --no-unknown | "$PY" -c 'import json,sys; d=json.load(sys.stdin)["predictions"][0]; print({t["class"]: t["probability"] for t in d["top"]}[sys.argv[1]])' "$2"; }
"$PY" scripts/docs/side_by_side.py docs/explain.png \
    "$T/cat.png:the run's dream of a cat" \
    "$T/ex/cat.cat.png:CAM for cat (p=$(printf %.3f "$(p "$T/cat.png" cat)"))" \
    "$T/ex/cat.dog.png:CAM for dog" \
    "$T/maps/cat.maps.features.4.png:16 feature maps of features.4"
echo "wrote docs/explain.png"
