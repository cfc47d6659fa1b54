#!/usr/bin/env bash
# Regenerates the speech fixtures: 16 kHz mono 16-bit WAV, spoken by Debian's festival voices
# and espeak-ng (English for a harder test, German and Spanish for language detection).
# Needs: festival festvox-us-slt-hts festvox-kallpc16k espeak-ng sox. Texts: fixtures.json.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

say() {  # say ENGINE VOICE OUT TEXT...: each text one utterance, with pauses between them
    local engine=$1 voice=$2 out=$3; shift 3
    local parts=() i=0
    for text in "$@"; do
        echo "$text" > "$tmp/t$i.txt"
        if [ "$engine" = espeak-ng ]; then
            espeak-ng -v "$voice" -s 160 -g 2 -w "$tmp/raw$i.wav" -f "$tmp/t$i.txt"
        else
            text2wave -eval "($voice)" "$tmp/t$i.txt" -o "$tmp/raw$i.wav"
        fi
        sox "$tmp/raw$i.wav" -r 16000 -c 1 -b 16 "$tmp/s$i.wav" pad 0.4 0.8
        parts+=("$tmp/s$i.wav"); i=$((i + 1))
    done
    sox "${parts[@]}" "$out"
}

python3 - "$@" <<'PY' > "$tmp/plan.sh"
import json, shlex
for name, spec in json.load(open("fixtures.json")).items():
    if "derived" in spec:
        continue
    print("say", spec.get("engine", "festival"), spec["voice"], shlex.quote(name),
          *map(shlex.quote, spec["utterances"]))
PY
source "$tmp/plan.sh"

# the espeak English again under white noise (about 2 dB SNR): where a bigger model pays off
sox -R english_espeak.wav "$tmp/noise.wav" synth whitenoise vol 0.06
sox -m -v 1 english_espeak.wav -v 1 "$tmp/noise.wav" english_noisy.wav
