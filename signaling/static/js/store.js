// One store, one reducer: the single source of truth for the UI.

export const initialState = {
  conn: "connecting",          // connecting | connected | reconnecting
  session: null,               // {session_id, name, protected, bot, lobbies}
  publicLobbies: [],
  lobby: null,                 // {id, name, private, has_password, max_participants}
  participants: [],            // [{session_id, name, bot, connected}]
  messages: [],                // chat and final transcripts, ordered by message_id
  captions: {},                // segment_id -> interim {speaker_name, text, speaker_id}
  bots: {},                    // bot_id -> {bot_id, kind, name, status, detail}
  kinds: [],                   // bot kinds offered by providers
  levels: {},                  // session_id -> 0..1 audio level (speaking indicator)
  peerState: {},               // session_id -> RTCPeerConnection state
  volumes: {},                 // session_id -> 0..1
  mic: "off",                  // off | on | muted | denied | unavailable
  notice: null,                // {kind: "error"|"info", text}
};

function byMessageId(a, b) { return a.message_id - b.message_id; }

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
      return {
        ...state,
        lobby: action.lobby,
        participants: action.participants,
        ...(moved ? { messages: [], captions: {}, bots: {}, levels: {}, peerState: {} } : {}),
      };
    }
    case "left":
      return { ...state, lobby: null, participants: [], messages: [], captions: {}, bots: {},
               levels: {}, peerState: {} };
    case "stored": {  // a chat message or a final transcript
      const m = action.message;
      if (!state.lobby || m.lobby_id !== state.lobby.id) return state;
      if (state.messages.some((x) => x.message_id === m.message_id)) return state;
      const captions = { ...state.captions };
      if (m.segment_id) delete captions[m.segment_id];
      return { ...state, messages: [...state.messages, m].sort(byMessageId), captions };
    }
    case "interim": {
      const t = action.transcript;
      if (!state.lobby || t.lobby_id !== state.lobby.id) return state;
      const captions = { ...state.captions };
      if (t.text) captions[t.segment_id] = t; else delete captions[t.segment_id];
      return { ...state, captions };
    }
    case "bot_status": {
      const b = action.status;
      if (!state.lobby || b.lobby_id !== state.lobby.id) return state;
      const bots = { ...state.bots };
      if (b.status === "stopped") delete bots[b.bot_id]; else bots[b.bot_id] = b;
      return { ...state, bots };
    }
    case "bots":
      return { ...state, bots: Object.fromEntries(action.bots.map((b) => [b.bot_id, b])) };
    case "kinds":
      return { ...state, kinds: action.kinds };
    case "levels":
      return { ...state, levels: action.levels };
    case "peer_state":
      return { ...state, peerState: { ...state.peerState, [action.id]: action.state } };
    case "volume":
      return { ...state, volumes: { ...state.volumes, [action.id]: action.volume } };
    case "mic":
      return { ...state, mic: action.mic };
    case "notice":
      return { ...state, notice: action.notice };
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
