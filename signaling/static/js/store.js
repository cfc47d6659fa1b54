// One store, one reducer: the single source of truth for the UI.

export const CAPTION_TTL_MS = 4000;  // an interim nobody updated for this long is gone

export const initialState = {
  conn: "connecting",          // connecting | connected | reconnecting | replaced | ended
  session: null,               // {session_id, name, protected, bot, lobbies}
  publicLobbies: [],
  lobby: null,                 // {id, name, private, has_password, max_participants}
  participants: [],            // [{session_id, name, bot, connected}]
  messages: [],                // chat and final transcripts, ordered by message_id
  captions: {},                // segment_id -> interim {speaker_id, speaker_name, text, at}
  bots: {},                    // bot_id -> {bot_id, kind, name, status, detail}
  kinds: [],                   // bot kinds offered by providers
  levels: {},                  // session_id -> 0..1 audio level (speaking indicator)
  peerState: {},               // session_id -> connecting|connected|reconnecting|failed|closed
  peerPath: {},                // session_id -> {local, remote} candidate types in use, or null
  volumes: {},                 // session_id -> 0..1
  mic: "off",                  // off | on | muted | denied | unavailable
  talking: false,              // push-to-talk held while muted
  devices: { inputs: [], outputs: [] },  // [{deviceId, label}]
  input: "",                   // the chosen microphone ("" the default)
  output: "",                  // the chosen speaker
  testLevel: null,             // the microphone test's level, while it runs
  captionsOn: true,
  captionSize: "normal",       // small | normal | large
  announcement: "",            // the latest final, for screen readers
  prompt: null,                // {lobby_id, name, message}: a lobby's password is needed
  notice: null,                // {kind: "error"|"info", text}
  audioBlocked: false,         // the browser refused to play until the person clicks
  // the microphone's processing, remembered by this browser (localStorage "voicebot.sound")
  sound: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
};

function byMessageId(a, b) { return a.message_id - b.message_id; }

// a final that replaces an earlier one (the sentence went on after a pause) takes its place:
// only a final of the same speaker from the same bot (docs/protocol.md, "transcript")
function replaces(later, earlier) {
  return Boolean(later.replaces && later.replaces.includes(earlier.segment_id)
    && later.bot_id === earlier.bot_id && later.speaker_id === earlier.speaker_id);
}

// interims of speakers who are gone (left, or disconnected) come off at once
function liveCaptions(captions, participants) {
  const here = new Set(participants.filter((p) => p.connected).map((p) => p.session_id));
  const kept = Object.entries(captions).filter(([, c]) => here.has(c.speaker_id));
  return kept.length === Object.keys(captions).length ? captions : Object.fromEntries(kept);
}

export function reducer(state, action) {
  switch (action.type) {
    case "conn":
      return { ...state, conn: action.conn };
    case "session":
      return { ...state, session: action.session };
    case "public_lobbies":
      return { ...state, publicLobbies: action.lobbies };
    case "lobby_state": {
      if (state.lobby && state.lobby.id !== action.lobby.id && action.joined !== true) return state;
      const moved = !state.lobby || state.lobby.id !== action.lobby.id;
      const base = moved ? { messages: [], captions: {}, bots: {}, levels: {}, peerState: {},
                                 peerPath: {} } : {};
      return {
        ...state,
        ...base,
        lobby: action.lobby,
        participants: action.participants,
        captions: liveCaptions(moved ? {} : state.captions, action.participants),
        prompt: null,
      };
    }
    case "peer_removed": {
      const captions = Object.fromEntries(Object.entries(state.captions)
        .filter(([, c]) => c.speaker_id !== action.id));
      return { ...state, captions };
    }
    case "left":
      return { ...state, lobby: null, participants: [], messages: [], captions: {}, bots: {},
               levels: {}, peerState: {}, peerPath: {}, talking: false };
    case "stored": {  // a chat message or a final transcript
      const m = action.message;
      if (!state.lobby || m.lobby_id !== state.lobby.id) return state;
      if (state.messages.some((x) => x.message_id === m.message_id)) return state;
      if (m.segment_id && state.messages.some((x) => replaces(x, m))) return state;
      const captions = { ...state.captions };
      if (m.segment_id) delete captions[m.segment_id];
      const announcement = m.segment_id && action.live ? `${m.speaker_name}: ${m.text}`
                                                       : state.announcement;
      const kept = m.replaces && m.replaces.length
        ? state.messages.filter((x) => !replaces(m, x)) : state.messages;
      return { ...state, messages: [...kept, m].sort(byMessageId), captions, announcement };
    }
    case "interim": {
      const t = action.transcript;
      if (!state.lobby || t.lobby_id !== state.lobby.id) return state;
      const captions = { ...state.captions };
      if (t.text) captions[t.segment_id] = { ...t, at: action.at };
      else delete captions[t.segment_id];
      return { ...state, captions };
    }
    case "expire_captions": {
      const kept = Object.entries(state.captions).filter(([, c]) => action.now - c.at < CAPTION_TTL_MS);
      if (kept.length === Object.keys(state.captions).length) return state;
      return { ...state, captions: Object.fromEntries(kept) };
    }
    case "bot_status": {
      const b = action.status;
      if (!state.lobby || b.lobby_id !== state.lobby.id) return state;
      const bots = { ...state.bots };
      if (b.status === "stopped") delete bots[b.bot_id]; else bots[b.bot_id] = { ...bots[b.bot_id], ...b };
      return { ...state, bots };
    }
    case "bots":
      return { ...state, bots: Object.fromEntries(action.bots.map((b) => [b.bot_id, b])) };
    case "kinds":
      return { ...state, kinds: action.kinds };
    case "levels":
      return { ...state, levels: action.levels };
    case "peer_state":
      return { ...state, peerState: { ...state.peerState, [action.id]: action.state },
               peerPath: { ...state.peerPath, [action.id]: action.path || null } };
    case "volume":
      return { ...state, volumes: { ...state.volumes, [action.id]: action.volume } };
    case "mic":
      return { ...state, mic: action.mic, talking: action.mic === "muted" ? state.talking : false };
    case "talking":
      return { ...state, talking: action.talking };
    case "devices":
      return { ...state, devices: action.devices };
    case "input":
      return { ...state, input: action.id };
    case "output":
      return { ...state, output: action.id };
    case "test_level":
      return { ...state, testLevel: action.level };
    case "captions_on":
      return { ...state, captionsOn: action.on };
    case "caption_size":
      return { ...state, captionSize: action.size };
    case "prompt":
      return { ...state, prompt: action.prompt };
    case "notice":
      return { ...state, notice: action.notice };
    case "audio_blocked":
      return { ...state, audioBlocked: action.blocked };
    case "sound":
      return { ...state, sound: { ...state.sound, ...action.sound } };
    default:
      throw new Error(`unknown action ${action.type}`);
  }
}

export function createStore(reduce, state) {
  const listeners = new Set();
  return {
    get state() { return state; },
    dispatch(action) {
      const next = reduce(state, action);
      if (next === state) return;
      const prev = state;
      state = next;
      for (const fn of listeners) fn(state, prev);
    },
    subscribe(fn) { listeners.add(fn); return () => listeners.delete(fn); },
  };
}
