#!/usr/bin/env bash
# Regenerates the speech fixtures: 16 kHz mono 16-bit WAV, spoken by Debian's festival voices.
# Needs: festival festvox-us-slt-hts festvox-kallpc16k sox. The texts are in fixtures.json.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

say() {  # say VOICE OUT TEXT...: each text one utterance, with pauses between them
    local voice=$1 out=$2; shift 2
    local parts=() i=0
    for text in "$@"; do
        echo "$text" > "$tmp/t$i.txt"
        text2wave -eval "($voice)" "$tmp/t$i.txt" -o "$tmp/raw$i.wav"
        sox "$tmp/raw$i.wav" -r 16000 -c 1 -b 16 "$tmp/s$i.wav" pad 0.4 0.8
        parts+=("$tmp/s$i.wav"); i=$((i + 1))
    done
    sox "${parts[@]}" "$out"
}

python3 - "$@" <<'PY' > "$tmp/plan.sh"
import json, shlex
for name, spec in json.load(open("fixtures.json")).items():
    print("say", spec["voice"], shlex.quote(name), *map(shlex.quote, spec["utterances"]))
PY
source "$tmp/plan.sh"
