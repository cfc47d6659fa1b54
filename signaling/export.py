"""Transcript export: final transcripts as SRT, WebVTT, plain text or JSON."""

from __future__ import annotations

import json

from shared.protocol import Transcript

FORMATS = {"srt": "application/x-subrip", "vtt": "text/vtt", "txt": "text/plain",
           "json": "application/json"}


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(fmt: str, lobby_name: str, finals: list[Transcript]) -> tuple[str, str]:
    """Returns ``(body, content type)``; times are relative to the first final's start."""
    finals = sorted(finals, key=lambda t: (t.start, t.message_id or 0))
    origin = finals[0].start if finals else 0.0
    rows = [(t.start - origin, max(t.end, t.start) - origin, t.speaker_name or t.speaker_id,
             " ".join(t.text.split()), t) for t in finals]
    if fmt == "srt":
        body = "".join(f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{who}: {text}\n\n"
                       for i, (a, b, who, text, _) in enumerate(rows, 1))
    elif fmt == "vtt":
        # cue text may not contain "-->", and "<" starts a tag: escape what WebVTT needs
        def esc(text: str) -> str:
            return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

        body = "WEBVTT\n\n" + "".join(
            f"{_clock(a, '.')} --> {_clock(b, '.')}\n<v {esc(who)}>{esc(text)}\n\n"
            for a, b, who, text, _ in rows)
    elif fmt == "txt":
        body = "".join(f"[{_clock(a, '.')[:8]}] {who}: {text}\n" for a, _, who, text, _ in rows)
    elif fmt == "json":
        body = json.dumps({"lobby": lobby_name, "segments": [
            {"start": round(a, 3), "end": round(b, 3), "speaker": who,
             "speaker_id": t.speaker_id, "text": text, "model": t.model,
             "language": t.language, "time": t.start} for a, b, who, text, t in rows]},
            ensure_ascii=False, indent=1)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return body, FORMATS[fmt]
