"""Captions as a plugin reads them: the reader that turns transcripts into ``Caption``s.

The wire has two kinds of transcript (docs/protocol.md, ``transcript``): interims, replaced in
place by segment id, and finals, stored, of which a later final may supersede earlier ones
(a sentence that went on after a pause). A plugin should not have to keep that bookkeeping:
``CaptionReader`` remembers the finals it handed out and gives each new final the ones it
replaces, so a plugin can tell a new sentence from a revision of one it has seen. No I/O: the
runner and ``bots.testing.FakeLobby`` feed it alike.
"""

from __future__ import annotations

import collections

from shared import protocol as p

from .plugin import Caption, Peer

KEEP_FINALS = 512  # finals remembered per bot: a replacement names recent ones only


class CaptionReader:
    def __init__(self, interims: bool = False, keep: int = KEEP_FINALS) -> None:
        self.interims = interims
        self._keep = keep
        self._finals: collections.OrderedDict[str, Caption] = collections.OrderedDict()

    def read(self, msg: p.Transcript, peers: dict[str, Peer]) -> Caption | None:
        """The caption ``msg`` gives a plugin, or None (an interim it did not ask for)."""
        if not msg.final and not self.interims:
            return None
        speaker = peers.get(msg.speaker_id) or Peer(msg.speaker_id, msg.speaker_name)
        replaced = tuple(old for old in (self._finals.pop(s, None) for s in msg.replaces)
                         if old is not None)
        caption = Caption(speaker=speaker, text=msg.text, final=msg.final,
                          segment_id=msg.segment_id, start=msg.start, end=msg.end,
                          language=msg.language, bot_id=msg.bot_id, replaced=replaced)
        if msg.final:
            self._finals[msg.segment_id] = caption
            while len(self._finals) > self._keep:
                self._finals.popitem(last=False)
        return caption
