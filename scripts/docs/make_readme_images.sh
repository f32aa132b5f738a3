#!/usr/bin/env bash
# Regenerates docs/dreams.png and docs/attack.png (see docs/README.md).
# shellcheck source=scripts/docs/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
caps=()
for c in tabby "Siamese cat" zebra "golden retriever" goldfish; do
    f="$T/$(echo "$c" | tr ' ' _).png"
    p=$("$TL" dream --backbone mobilenet_v2 --class "$c" -o "$f" --json -q | "$PY" -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["probability"])')
    caps+=("$f:$c p=$p")
done
"$PY" scripts/docs/side_by_side.py docs/dreams.png "${caps[@]}"
dog="$T/golden_retriever.png"
"$TL" attack "$dog" --backbone mobilenet_v2 --target tabby --eps 4/255 -o "$T/adv.png" --diff "$T/diff.png" -q
top1() { "$TL" predict --backbone mobilenet_v2 "$1" --json | "$PY" -c 'import json,sys; p=json.load(sys.stdin)["predictions"][0]; print("%s p=%.3f" % (p["class"], p["probability"]))'; }
adv=$(top1 "$T/adv.png")
orig=$(top1 "$dog")
"$PY" scripts/docs/side_by_side.py docs/attack.png "$dog:original: $orig" "$T/adv.png:eps 4/255: $adv" "$T/diff.png:difference, amplified"
echo "wrote docs/dreams.png docs/attack.png"
