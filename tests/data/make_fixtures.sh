#!/usr/bin/env bash
# Regenerates the speech fixtures: 16 kHz mono 16-bit WAV, spoken by Debian's festival voices
# and espeak-ng (English for a harder test, German and Spanish for language detection, and
# one speaker switching between four languages).
# Needs: festival festvox-us-slt-hts festvox-kallpc16k espeak-ng sox. Texts: fixtures.json.
#
#   ./make_fixtures.sh                     # every fixture
#   ./make_fixtures.sh english_hard.wav    # only the ones named
#
# Name the ones you mean: regenerating a committed fixture changes what the tests measure. The
# voices themselves are deterministic, and sox runs with -R (its fixed seed for dither and
# noise), so a rerun gives the same files; but the older fixtures were converted with random
# dither, so theirs would not match the committed ones bit for bit.
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
        # shellcheck disable=SC2086  # PAD is "before after", two arguments
        sox -R "$tmp/raw$i.wav" -r 16000 -c 1 -b 16 "$tmp/s$i.wav" pad ${PAD:-0.4 0.8}
        parts+=("$tmp/s$i.wav"); i=$((i + 1))
    done
    sox -R "${parts[@]}" "$out"
}

say_each() {  # say_each OUT VOICE SPEED TEXT [VOICE SPEED TEXT…]: espeak-ng, a voice each
    local out=$1; shift
    local parts=() i=0
    while (($#)); do
        echo "$3" > "$tmp/t$i.txt"
        espeak-ng -v "$1" -s "$2" -g 2 -w "$tmp/raw$i.wav" -f "$tmp/t$i.txt"
        # shellcheck disable=SC2086  # PAD is "before after", two arguments
        sox -R "$tmp/raw$i.wav" -r 16000 -c 1 -b 16 "$tmp/s$i.wav" pad ${PAD:-0.4 0.8}
        parts+=("$tmp/s$i.wav"); i=$((i + 1)); shift 3
    done
    sox -R "${parts[@]}" "$out"
}

rms() {  # RMS amplitude of a whole file, pauses included
    sox "$1" -n stat 2>&1 | awk '/^RMS +amplitude/ {print $3}'
}

noisy() {  # noisy FILE COLOR SNR_DB: mixes in noise SNR_DB under the speech
    local file=$1 color=$2 snr=$3
    sox -R "$file" "$tmp/noise.wav" synth "$color"
    local gain
    gain=$(awk -v s="$(rms "$file")" -v n="$(rms "$tmp/noise.wav")" -v snr="$snr" \
        'BEGIN {printf "%.6f", s / n / 10 ^ (snr / 20)}')
    cp "$file" "$tmp/clean.wav"
    # both at 0.7: kal_diphone peaks near full scale, and the noise on top would clip
    sox -R -m -v 0.7 "$tmp/clean.wav" -v "$(awk -v g="$gain" 'BEGIN {print g * 0.7}')" \
        "$tmp/noise.wav" -b 16 "$file"
}

python3 - "$@" <<'PY' > "$tmp/plan.sh"
import json, shlex, sys
wanted = set(sys.argv[1:])
spec = json.load(open("fixtures.json"))
unknown = wanted - set(spec)
if unknown:
    sys.exit(f"not in fixtures.json: {' '.join(sorted(unknown))}")
for name, fixture in spec.items():
    if "derived" in fixture or (wanted and name not in wanted):
        continue
    pad = " ".join(map(str, fixture.get("pad", [0.4, 0.8])))
    if isinstance(fixture["utterances"][0], dict):  # a voice and speed for each utterance
        each = [str(u[k]) for u in fixture["utterances"] for k in ("voice", "speed", "text")]
        print(f"PAD={shlex.quote(pad)}", "say_each", shlex.quote(name), *map(shlex.quote, each))
        continue
    print(f"PAD={shlex.quote(pad)}", "say", fixture.get("engine", "festival"), fixture["voice"],
          shlex.quote(name), *map(shlex.quote, fixture["utterances"]))
    if "noise" in fixture:
        print("noisy", shlex.quote(name), fixture["noise"]["color"], fixture["noise"]["snr_db"])
if not wanted or wanted & {"english_espeak.wav", "english_noisy.wav"}:
    print("make_english_noisy")
PY

make_english_noisy() {
    # the espeak English again under white noise (about 2 dB SNR): noise this heavy defeats
    # per-utterance segmentation, so live it shows little difference between models
    sox -R english_espeak.wav "$tmp/noise.wav" synth whitenoise vol 0.06
    sox -m -v 1 english_espeak.wav -v 1 "$tmp/noise.wav" english_noisy.wav
}
source "$tmp/plan.sh"
