"""16 kHz mono WAV files as the benchmarks read and write them, where their speech is, and how
they sound after the codec a bot's peer sends them through."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

RATE = 16000


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def through_opus(samples: np.ndarray) -> np.ndarray:
    """``samples`` as a bot receives them from a peer that sends them with aiortc: 48 kHz,
    the same in both channels (``bots.mesh.dual_mono``), Opus at aiortc's settings (96 kbit/s,
    ``voip``), decoded, and back to 16 kHz mono (``bots.audio.SpeechResampler``; a few ms
    later: the codec's look-ahead). What Whisper reads live, for an offline baseline on the
    same audio."""
    import av  # PyAV: aiortc's own codec library

    from bots.audio import SpeechResampler
    from bots.mesh import dual_mono

    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "stereo", "s16"
    encoder.bit_rate, encoder.options = 96000, {"application": "voip"}
    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate, decoder.layout = 48000, "stereo"
    up = av.AudioResampler(format="flt", layout="mono", rate=48000)
    down = SpeechResampler()
    out: list[np.ndarray] = []

    def receive(packets: list[av.Packet]) -> None:
        for packet in packets:
            out.extend(down(decoded) for decoded in decoder.decode(packet))

    frame = RATE // 50  # 20 ms, as aiortc sends
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    pcm = np.pad(pcm, (0, -len(pcm) % frame))  # the last frame, filled up with silence
    for at in range(0, len(pcm), frame):
        chunk = av.AudioFrame.from_ndarray(pcm[None, at:at + frame], format="s16", layout="mono")
        chunk.sample_rate, chunk.pts = RATE, at
        for loud in up.resample(chunk):
            both = dual_mono(loud)
            both.pts = loud.pts
            receive(encoder.encode(both))
    receive(encoder.encode(None))  # what the encoder still holds
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


# the quietest sound a listener hears as speech: -50 dBFS, about the noise floor of a quiet
# room through a laptop's microphone. The synthetic voices leave faint hum (-53 to -60 dBFS,
# most of it under 300 Hz) for up to 0.2 s before and after some sentences; counted as
# speech, it put their true end that much late (and TTFS from it that much low)
AUDIBLE_RMS = 10 ** (-50 / 20)


def speech_spans(samples: np.ndarray, min_gap_s: float = 0.6, frame_s: float = 0.02,
                 floor: float = 1e-3) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches of sound in ``samples`` that at least
    ``min_gap_s`` of silence separates: the sentences of a fixture made with pauses. Sound is
    over ``floor`` (the tests' fixtures are cut at -60 dBFS; where speech really is, for a
    latency, is ``AUDIBLE_RMS``) and, under noise (``english_hard.wav``), stands well above
    the noise floor (the quietest tenth of the frames)."""
    frame = int(frame_s * RATE)
    frames = samples[:len(samples) // frame * frame].reshape(-1, frame)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    loud = rms > max(floor, 3 * float(np.percentile(rms, 10)))
    spans: list[tuple[float, float]] = []
    for i in np.flatnonzero(loud):
        at = i * frame_s
        if spans and at - spans[-1][1] < min_gap_s:
            spans[-1] = (spans[-1][0], at + frame_s)
        else:
            spans.append((at, at + frame_s))
    return spans
