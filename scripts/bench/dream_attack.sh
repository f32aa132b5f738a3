#!/usr/bin/env bash
# The dream and attack bars on MobileNetV2 with the real ImageNet weights (needs ../shared):
#  - dream: tabby, Siamese cat, zebra, golden retriever, goldfish with default settings
#    (256 steps), re-scored probability of each saved PNG, TV, CPU time; TV with --tv 0;
#    `cat` of a Cats-vs-Dogs run; same seed twice -> same bytes
#  - attack: the first 20 dogs (by name) -> tabby at eps 4/255 (ImageNet classifier), and
#    -> cat at eps 2/255 (Cats-vs-Dogs run), judged by `tl predict` on the saved files
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
scripts/setup.sh >/dev/null
TL=target/release/tl
PY=.venv/bin/python
DATA=../shared/data/cats_dogs
[ -d "$DATA" ] || { echo "SKIPPED: $DATA not present"; exit 0; }
[ -f backbones/mobilenet_v2.json ] || "$PY" scripts/export_backbones.py mobilenet_v2 --weights ../shared/models/mobilenet_v2-imagenet.safetensors
OUT=out/bench/dream_attack
rm -rf "$OUT"; mkdir -p "$OUT"
# fmt FORMAT: format the JSON on stdin with str.format; attack reports also get
# min_psnr, attacked_names and skipped_names.
fmt() {
    "$PY" -c '
import json, sys
d = json.load(sys.stdin)
if "outcomes" in d:
    ok = [o for o in d["outcomes"] if o["skipped"] is None]
    d["min_psnr"] = min(o["psnr_db"] for o in ok) if ok else float("nan")
    d["skipped_names"] = [o["input"].split("/")[-1] for o in d["outcomes"] if o["skipped"]]
    d["s"] = d["summary"][0]
print(sys.argv[1].format(**d))' "$1"
}

echo "== dream: default settings (256 steps), MobileNetV2 ImageNet classifier"
for c in tabby "Siamese cat" zebra "golden retriever" goldfish; do
    f="$OUT/$(echo "$c" | tr ' ' _)"
    a=$("$TL" dream --backbone mobilenet_v2 --class "$c" -o "$f.png" --json -q | fmt 'p={probability:.4f} TV={total_variation:.4f} {seconds:.1f}s')
    b=$("$TL" dream --backbone mobilenet_v2 --class "$c" --tv 0 -o "$f-tv0.png" --json -q | fmt 'p={probability:.4f} TV={total_variation:.4f}')
    printf '%-18s default: %s   --tv 0: %s\n' "$c" "$a" "$b"
done
"$TL" dream --backbone mobilenet_v2 --class zebra -o "$OUT/zebra-again.png" -q --json >/dev/null
cmp -s "$OUT/zebra.png" "$OUT/zebra-again.png" && echo "same seed twice: identical PNG bytes" || echo "same seed twice: DIFFERENT bytes"

echo "== Cats-vs-Dogs run (50/50 split)"
"$TL" train --backbone mobilenet_v2 "$DATA" --val-split 0.5 --out "$OUT/run" -q --force | tail -2
a=$("$TL" dream --run "$OUT/run" --class cat -o "$OUT/cat.png" --json -q | fmt 'p={probability:.4f} TV={total_variation:.4f} {seconds:.1f}s')
echo "dream cat (run): $a"

mkdir -p "$OUT/dogs20"
for f in $(ls "$DATA/dog" | sort | sed -n 1,20p); do ln -s "$(realpath "$DATA/dog/$f")" "$OUT/dogs20/$f"; done
echo "== attack: 20 dogs -> tabby, ImageNet classifier, eps 4/255, 50 steps"
"$TL" attack "$OUT/dogs20" --backbone mobilenet_v2 --target tabby --eps 4/255 --steps 50 -o "$OUT/adv_tabby" --json -q > "$OUT/attack_tabby.json"
fmt 'attacked {s[attacked]}, success {s[success_rate]:.0%}, median steps {s[median_steps]}, median seconds {s[median_seconds]:.2f}, min PSNR {min_psnr:.1f} dB; skipped: {skipped_names}' < "$OUT/attack_tabby.json"
echo "tl predict on the saved files: $("$TL" predict --backbone mobilenet_v2 "$OUT/adv_tabby" -k 1 | awk '{print $2}' | sort | uniq -c | xargs)"
echo "== attack: 20 dogs -> cat, Cats-vs-Dogs run, eps 2/255, 50 steps"
"$TL" attack "$OUT/dogs20" --run "$OUT/run" --target cat --eps 2/255 --steps 50 -o "$OUT/adv_cat" --json -q > "$OUT/attack_cat.json"
fmt 'attacked {s[attacked]}, success {s[success_rate]:.0%}, median steps {s[median_steps]}, median seconds {s[median_seconds]:.2f}, min PSNR {min_psnr:.1f} dB; skipped: {skipped_names}' < "$OUT/attack_cat.json"
echo "tl predict on the saved files: $("$TL" predict "$OUT/run" "$OUT/adv_cat" -k 1 | awk '{print $2}' | sort | uniq -c | xargs)"
echo "== robustness table (Cats-vs-Dogs run)"
"$TL" attack "$OUT/dogs20" --run "$OUT/run" --target cat --eps 1/255,2/255,4/255,8/255 --steps 50 -o "$OUT/sweep" -q | tail -6
