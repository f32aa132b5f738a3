#!/usr/bin/env bash
# Regenerates docs/channels.png (one channel at five depths of MobileNetV2) and
# docs/dreams_batch.png (`--batch 3` of one class, kept apart by the diversity term); see
# docs/README.md.
# shellcheck source=scripts/docs/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
caps=()
for lc in features.3:5 features.6:12 features.10:7 features.13:40 features.16:100; do
    layer=${lc%%:*}; channel=${lc##*:}
    f="$T/$layer-$channel.png"
    r=$("$TL" dream --backbone mobilenet_v2 --layer "$layer" --channel "$channel" -o "$f" --json -q | "$PY" -c 'import json,sys; c=json.load(sys.stdin)["channel"]; print("rank %d of %d" % (c["rank"], c["channels"]))')
    caps+=("$f:$layer ch $channel ($r)")
done
"$PY" scripts/docs/side_by_side.py docs/channels.png "${caps[@]}"
json=$("$TL" dream --backbone mobilenet_v2 --class "golden retriever" --batch 3 -o "$T/gr.png" --json -q)
sim=$(echo "$json" | "$PY" -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["similarity"])')
caps=()
for i in 1 2 3; do
    p=$(echo "$json" | "$PY" -c "import json,sys; print('%.3f' % json.load(sys.stdin)['images'][$i - 1]['probability'])")
    caps+=("$T/gr-$i.png:golden retriever $i/3 p=$p")
done
"$PY" scripts/docs/side_by_side.py docs/dreams_batch.png "${caps[@]}"
echo "wrote docs/channels.png docs/dreams_batch.png (Gram similarity of the three: $sim)"
