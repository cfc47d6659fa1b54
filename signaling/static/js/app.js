// The browser client: wires the connection, the mesh and audio to one store, renders it.
// Everything user-supplied is put on the page with textContent, never as HTML.

import { Connection, ServerError } from "./connection.js";
import { Mesh } from "./mesh.js";
import { createStore, initialState, reducer } from "./store.js";

const base = new URL(".", document.baseURI);
const store = createStore(reducer, initialState);
const conn = new Connection(base, {
  onStatus: (s) => store.dispatch({ type: "conn", conn: s }),
  onWelcome: (data) => welcomed(data),
});
const mesh = new Mesh(conn, {
  onStream: (id, stream) => audio.attach(id, stream),
  onPeerState: (id, state) => {
    store.dispatch({ type: "peer_state", id, state });
    if (state === "closed") audio.detach(id);
  },
});

// --- audio out, levels -------------------------------------------------------------------------

const audio = {
  ctx: null,
  nodes: new Map(),    // session_id -> {el, analyser, buf}
  context() {
    if (!this.ctx) this.ctx = new AudioContext();
    if (this.ctx.state === "suspended") this.ctx.resume();
    return this.ctx;
  },
  attach(id, stream, { play = true } = {}) {
    this.detach(id);
    let el = null;
    if (play) {
      el = new Audio();
      el.autoplay = true;
      el.srcObject = stream;  // Chrome feeds WebAudio from a remote stream only while it plays
      const v = store.state.volumes[id];
      el.volume = v === undefined ? 1 : v;
      el.muted = v === 0;
      el.play().catch(() => {});
    }
    const ctx = this.context();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 1024;
    ctx.createMediaStreamSource(stream).connect(analyser);
    this.nodes.set(id, { el, analyser, buf: new Float32Array(analyser.fftSize) });
  },
  detach(id) {
    const n = this.nodes.get(id);
    if (!n) return;
    if (n.el) { n.el.pause(); n.el.srcObject = null; }
    this.nodes.delete(id);
  },
  setVolume(id, volume) {
    const n = this.nodes.get(id);
    if (n && n.el) { n.el.volume = volume; n.el.muted = volume === 0; }
  },
  levels() {
    const out = {};
    for (const [id, n] of this.nodes) {
      n.analyser.getFloatTimeDomainData(n.buf);
      let sum = 0;
      for (const x of n.buf) sum += x * x;
      out[id] = Math.sqrt(sum / n.buf.length);
    }
    return out;
  },
};

setInterval(() => {
  if (!store.state.lobby) return;
  const levels = audio.levels();
  const prev = store.state.levels;
  const changed = Object.keys(levels).length !== Object.keys(prev).length ||
    Object.entries(levels).some(([id, v]) => Math.abs((prev[id] || 0) - v) > 0.005);
  if (changed) store.dispatch({ type: "levels", levels });
}, 150);

// --- protocol handlers ---------------------------------------------------------------------------

conn.on("session", (d) => store.dispatch({ type: "session", session: d.session }));
conn.on("lobby_state", (d, id) => store.dispatch({ type: "lobby_state", lobby: d.lobby,
                                                   participants: d.participants,
                                                   joined: id !== undefined }));
conn.on("chat", (d) => store.dispatch({ type: "stored", message: d }));
conn.on("transcript", (d) => store.dispatch(d.final ? { type: "stored", message: d }
                                                    : { type: "interim", transcript: d }));
conn.on("bot_status", (d) => store.dispatch({ type: "bot_status", status: d }));
conn.on("error", (d, id) => { if (!id) notify("error", d.message); });

function notify(kind, text) { store.dispatch({ type: "notice", notice: text ? { kind, text } : null }); }

async function welcomed(data) {
  store.dispatch({ type: "session", session: data.session });
  mesh.myId = data.session.session_id;
  const lobby = store.state.lobby;
  if (lobby) {  // resumed: the server restores us; ask only for what we missed
    const last = store.state.messages.at(-1);
    try {
      await conn.request("join", { lobby_id: lobby.id, history_since: last ? last.message_id : null });
    } catch (e) {
      notify("error", `Could not rejoin: ${e.message}`);
      leaveLocally();
    }
  } else if (data.session.name) {
    tryJoinFromLink();
  }
}

// --- actions -------------------------------------------------------------------------------------

async function setName(name, password) {
  try {
    const r = await conn.request("set_name", { name, password: password || null });
    store.dispatch({ type: "session", session: r.session });
    notify(null);
    tryJoinFromLink();
  } catch (e) { notify("error", e.message); }
}

function linkedLobby() {
  const m = /lobby=([A-Za-z0-9_-]+)/.exec(location.hash);
  return m ? m[1] : null;
}

function tryJoinFromLink() {
  const id = linkedLobby();
  if (id && !store.state.lobby) join({ lobby_id: id });
}

async function startMic() {
  if (mesh.localStream) return;
  if (!navigator.mediaDevices?.getUserMedia) {
    store.dispatch({ type: "mic", mic: "unavailable" });
    notify("error", "This browser can't capture audio here (a secure https:// page is needed).");
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    mesh.setLocalStream(stream);
    audio.attach("me", stream, { play: false });
    store.dispatch({ type: "mic", mic: "on" });
  } catch (e) {
    const denied = e.name === "NotAllowedError" || e.name === "SecurityError";
    store.dispatch({ type: "mic", mic: denied ? "denied" : "unavailable" });
    notify("error", denied
      ? "Microphone access was denied: you can listen, but nobody hears you. Allow the microphone in the site settings, then leave and join again."
      : `No microphone: ${e.message}. You can listen, but nobody hears you.`);
  }
}

async function join(params) {
  audio.context();  // created on the click that joins: browsers allow sound after a gesture
  await startMic();
  mesh.lobbyId = params.lobby_id || null;
  try {
    const state = await conn.request("join", params);
    mesh.lobbyId = state.lobby.id;
    history.replaceState(null, "", `#lobby=${state.lobby.id}`);
    notify(null);
    refreshBots();
  } catch (e) {
    mesh.lobbyId = store.state.lobby ? store.state.lobby.id : null;
    if (e.code === "lobby_password_required" || e.code === "bad_password") {
      showPasswordPrompt(params, e.message);
    } else {
      notify("error", e.message);
    }
  }
}

async function leave() {
  const lobby = store.state.lobby;
  if (!lobby) return;
  try { await conn.request("part", { lobby_id: lobby.id }); } catch (e) { /* gone already */ }
  leaveLocally();
}

function leaveLocally() {
  mesh.closeAll();
  mesh.lobbyId = null;
  for (const id of [...audio.nodes.keys()]) if (id !== "me") audio.detach(id);
  if (mesh.localStream) {
    for (const t of mesh.localStream.getTracks()) t.stop();
    mesh.setLocalStream(null);
    audio.detach("me");
  }
  store.dispatch({ type: "mic", mic: "off" });
  store.dispatch({ type: "left" });
  history.replaceState(null, "", location.pathname + location.search);
  refreshLobbies();
}

function toggleMute() {
  const stream = mesh.localStream;
  if (!stream) return;
  const muted = store.state.mic === "on";
  for (const t of stream.getAudioTracks()) t.enabled = !muted;
  store.dispatch({ type: "mic", mic: muted ? "muted" : "on" });
}

async function sendChat(text) {
  const lobby = store.state.lobby;
  if (!lobby || !text.trim()) return true;
  try { await conn.request("chat", { lobby_id: lobby.id, text }); return true; }
  catch (e) { notify("error", e.message); return false; }
}

async function refreshLobbies() {
  try {
    const { lobbies } = await conn.api("api/lobbies");
    store.dispatch({ type: "public_lobbies", lobbies });
  } catch (e) { /* shown by the connection badge */ }
}

async function refreshBots() {
  const lobby = store.state.lobby || (mesh.lobbyId ? { id: mesh.lobbyId } : null);
  if (!lobby) return;
  try {
    const [{ kinds }, { bots }] = await Promise.all([
      conn.api("api/bots"), conn.api(`api/lobbies/${lobby.id}/bots`)]);
    store.dispatch({ type: "kinds", kinds });
    store.dispatch({ type: "bots", bots });
  } catch (e) { /* retried on the next tick */ }
}

async function addBot(kind) {
  const lobby = store.state.lobby;
  try {
    await conn.api(`api/lobbies/${lobby.id}/bots`, { method: "POST",
                                                      body: { kind, config: botConfig() } });
    refreshBots();
  } catch (e) { notify("error", e.message); }
}

async function removeBot(botId) {
  const lobby = store.state.lobby;
  try {
    await conn.api(`api/lobbies/${lobby.id}/bots/${botId}`, { method: "DELETE" });
    refreshBots();
  } catch (e) { notify("error", e.message); }
}

async function download(format) {
  const lobby = store.state.lobby;
  const resp = await fetch(new URL(`api/lobbies/${lobby.id}/transcript?format=${format}`, base),
                           { headers: { Authorization: `Bearer ${conn.token}` } });
  if (!resp.ok) { notify("error", "The transcript could not be downloaded."); return; }
  const url = URL.createObjectURL(await resp.blob());
  const a = h("a", { href: url, download: `transcript-${lobby.name}.${format}` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

setInterval(() => (store.state.lobby ? refreshBots() : refreshLobbies()), 5000);

// --- rendering -----------------------------------------------------------------------------------

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && k !== "list") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));  // text, never HTML
  }
  return el;
}

const $ = (id) => document.getElementById(id);

function time(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

const STATUS_TEXT = { connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…" };

function renderStatus(s) {
  const el = $("conn");
  el.textContent = STATUS_TEXT[s.conn];
  el.dataset.state = s.conn;
}

function renderNotice(s) {
  const el = $("notice");
  el.hidden = !s.notice;
  el.textContent = s.notice ? s.notice.text : "";
  el.dataset.kind = s.notice ? s.notice.kind : "";
}

function renderScreens(s) {
  $("welcome").hidden = !!s.lobby;
  $("room").hidden = !s.lobby;
  $("lobby-picker").hidden = !(s.session && s.session.name);
  const me = $("me");
  me.textContent = s.session && s.session.name ? `You are ${s.session.name}` : "";
  $("name-form").classList.toggle("compact", !!(s.session && s.session.name));
}

function renderLobbies(s) {
  const list = $("lobbies");
  list.replaceChildren(...(s.publicLobbies.length ? s.publicLobbies.map((lb) => h("li", {},
    h("span", { className: "lobby-name" }, lb.name),
    h("span", { className: "muted" }, `${lb.participant_count}/${lb.max_participants}`,
      lb.has_password ? " · password" : ""),
    h("button", { type: "button", onclick: () => join({ lobby_id: lb.id }) }, "Join"))) :
    [h("li", { className: "muted" }, "No public lobbies yet: create one.")]));
}

const BOT_STATUS = { pending: "waiting", starting: "starting", loading: "loading model",
                     live: "live", lagging: "lagging", failed: "failed" };

function renderRoom(s, prev) {
  if (!s.lobby) return;
  if (s.lobby !== prev.lobby) {
    $("lobby-title").textContent = s.lobby.name;
    $("lobby-kind").textContent = [s.lobby.private ? "private" : "public",
                                   s.lobby.has_password ? "password" : null].filter(Boolean).join(" · ");
    $("share").value = location.href;
  }
  if (s.participants !== prev.participants || s.levels !== prev.levels ||
      s.peerState !== prev.peerState || s.volumes !== prev.volumes || s.mic !== prev.mic) {
    renderParticipants(s);
  }
  if (s.messages !== prev.messages) renderMessages(s);
  if (s.captions !== prev.captions) renderCaptions(s);
  if (s.bots !== prev.bots || s.kinds !== prev.kinds) renderBots(s);
  const mute = $("mute");
  mute.textContent = s.mic === "muted" ? "Unmute" : "Mute";
  mute.disabled = !(s.mic === "on" || s.mic === "muted");
  mute.setAttribute("aria-pressed", s.mic === "muted");
}

function renderParticipants(s) {
  const myId = s.session && s.session.session_id;
  $("participants").replaceChildren(...s.participants.map((p) => {
    const isMe = p.session_id === myId;
    const level = isMe ? (s.mic === "on" ? s.levels.me || 0 : 0) : s.levels[p.session_id] || 0;
    const volume = s.volumes[p.session_id] ?? 1;
    return h("li", { className: "participant", dataset: {
        sessionId: p.session_id, level: level.toFixed(4), speaking: level > 0.02,
        peer: isMe ? "me" : s.peerState[p.session_id] || "new" } },
      h("span", { className: "dot", title: level > 0.02 ? "speaking" : "" }),
      h("span", { className: "pname" }, p.name, isMe ? " (you)" : ""),
      p.bot ? h("span", { className: "badge" }, "bot") : null,
      !p.connected ? h("span", { className: "muted" }, "away") : null,
      isMe ? (s.mic === "muted" ? h("span", { className: "muted" }, "muted") :
              s.mic === "denied" || s.mic === "unavailable" ? h("span", { className: "muted" }, "no mic") : null)
        : h("span", { className: "volume" },
            h("button", { type: "button", className: "small", title: "mute for me",
                          onclick: () => setPeerVolume(p.session_id, volume === 0 ? 1 : 0) },
              volume === 0 ? "Unmute" : "Mute"),
            h("input", { type: "range", min: 0, max: 1, step: 0.05, value: volume,
                         "aria-label": `volume of ${p.name}`,
                         oninput: (e) => setPeerVolume(p.session_id, Number(e.target.value)) })));
  }));
}

function setPeerVolume(id, volume) {
  audio.setVolume(id, volume);
  store.dispatch({ type: "volume", id, volume });
}

function renderMessages(s) {
  const log = $("messages");
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.replaceChildren(...s.messages.map((m) => {
    const transcript = Boolean(m.segment_id);
    const who = transcript ? m.speaker_name : m.kind === "system" ? "system" : m.name;
    return h("li", { className: transcript ? "msg transcript" : `msg ${m.kind}` },
      h("span", { className: "when" }, time(m.ts || m.start)),
      h("span", { className: "who" }, who),
      transcript ? h("span", { className: "badge", title: m.model || "" }, captionLabel(m)) : null,
      h("span", { className: "text" }, m.text));
  }));
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function captionLabel(t) {
  if (t.task === "translate") return `caption · ${t.language || "?"}→en`;
  return t.language && t.language !== "en" ? `caption · ${t.language}` : "caption";
}

function renderCaptions(s) {
  const live = Object.values(s.captions);
  $("captions").replaceChildren(...(live.length ? live.map((c) => h("p", { className: "caption" },
    h("span", { className: "who" }, c.speaker_name),
    c.language && (c.language !== "en" || c.task === "translate")
      ? h("span", { className: "badge" }, captionLabel(c)) : null,
    h("span", { className: "text" }, c.text))) :
    [h("p", { className: "muted" }, "Live captions appear here while people speak.")]));
}

function renderBots(s) {
  const select = $("bot-kind");
  const chosen = select.value;
  select.replaceChildren(...s.kinds.map((k) => h("option", { value: k.kind, title: k.description },
                                                k.kind)));
  if (chosen) select.value = chosen;
  $("add-bot").disabled = !s.kinds.length;
  renderBotOptions(s);
  const bots = Object.values(s.bots);
  $("bots").replaceChildren(...(bots.length ? bots.map((b) => h("li", {
      className: "bot", dataset: { status: b.status } },
    h("span", { className: "pname" }, b.name || b.kind),
    h("span", { className: `status ${b.status}` }, BOT_STATUS[b.status] || b.status),
    b.detail ? h("span", { className: "muted detail" }, b.detail) : null,
    h("button", { type: "button", className: "small", onclick: () => removeBot(b.bot_id) },
      "Remove"))) : [h("li", { className: "muted" }, "No bots in this lobby.")]));
}

function renderBotOptions(s) {
  // a menu for each setting of the chosen kind that has a fixed set of values (model, task…)
  const kind = s.kinds.find((k) => k.kind === $("bot-kind").value);
  const box = $("bot-options");
  const previous = Object.fromEntries([...box.querySelectorAll("select")].map((el) => [el.name, el.value]));
  const fields = kind ? Object.entries(kind.config || {}).filter(([, spec]) => spec.choices) : [];
  box.replaceChildren(...fields.map(([name, spec]) => h("label", { title: spec.help || "" }, name,
    h("select", { name, "aria-label": `${kind.kind} ${name}` },
      spec.choices.map((c) => h("option", { value: c, selected: (previous[name] ?? spec.default) === c },
                                String(c)))))));
}

function botConfig() {
  const config = {};
  for (const el of $("bot-options").querySelectorAll("select")) config[el.name] = el.value;
  return config;
}

function showPasswordPrompt(params, message) {
  notify("error", message);
  const form = $("password-form");
  form.hidden = false;
  form.onsubmit = (e) => {
    e.preventDefault();
    form.hidden = true;
    join({ ...params, password: $("lobby-password").value });
  };
}

store.subscribe((s, prev) => {
  renderStatus(s);
  renderNotice(s);
  renderScreens(s);
  if (s.publicLobbies !== prev.publicLobbies) renderLobbies(s);
  renderRoom(s, prev);
});

// --- forms ---------------------------------------------------------------------------------------

$("name-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setName($("name").value, $("name-password").value);
});
$("create-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("new-lobby").value.trim();
  if (!name) return;
  join({ lobby_name: name, private: $("new-private").checked,
         password: $("new-password").value || null });
});
$("chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("chat-input");
  if (await sendChat(input.value)) input.value = "";
});
$("leave").addEventListener("click", leave);
$("mute").addEventListener("click", toggleMute);
$("copy").addEventListener("click", () => navigator.clipboard?.writeText($("share").value));
$("add-bot").addEventListener("click", () => addBot($("bot-kind").value));
$("bot-kind").addEventListener("change", () => renderBotOptions(store.state));
for (const btn of document.querySelectorAll("[data-download]")) {
  btn.addEventListener("click", () => download(btn.dataset.download));
}

renderStatus(store.state);
renderScreens(store.state);
renderLobbies(store.state);
refreshLobbies();
conn.start();
window.voicebot = { store, conn, mesh, audio, ServerError };  // for debugging and the tests
