// The browser client: wires the connection, the mesh and audio to one store; the view renders
// it (view.js). This module holds the actions: what a click, a key or a server frame does.

import { Audio, applySound, listDevices, microphoneProblem, openMicrophone } from "./audio.js";
import { Connection, ServerError } from "./connection.js";
import { Mesh } from "./mesh.js";
import { createStore, initialState, reducer } from "./store.js";
import { botConfig, h, render, renderBotOptions } from "./view.js";

const base = new URL(".", document.baseURI);
const store = createStore(reducer, initialState);
const audio = new Audio((blocked) => store.dispatch({ type: "audio_blocked", blocked }));
// a click or key press anywhere is what a browser waits for before it plays sound
for (const event of ["click", "keydown"]) {
  document.addEventListener(event, () => { if (audio.blocked) audio.unblock(); }, { capture: true });
}
const conn = new Connection(base, {
  onStatus: (s) => store.dispatch({ type: "conn", conn: s }),
  onWelcome: (data) => welcomed(data),
  inCall: () => mesh.peers.size > 0,
});
const mesh = new Mesh(conn, {
  onStream: (id, stream) => audio.attach(id, stream, { volume: store.state.volumes[id] ?? 1 }),
  onPeerState: (id, state, path) => {
    store.dispatch({ type: "peer_state", id, state, path });
    if (state === "closed") audio.detach(id);
  },
});
let microphone = null;   // the MediaStream every peer hears (its track is in the mesh)
let testStream = null;   // the microphone test's own stream, before joining

// --- levels and the clock ----------------------------------------------------------------------

setInterval(() => {
  const s = store.state;
  if (testStream) store.dispatch({ type: "test_level", level: audio.level("test") });
  if (!s.lobby) return;
  const levels = audio.levels();
  const prev = s.levels;
  const changed = Object.keys(levels).length !== Object.keys(prev).length ||
    Object.entries(levels).some(([id, v]) => Math.abs((prev[id] || 0) - v) > 0.005);
  if (changed) store.dispatch({ type: "levels", levels });
}, 150);
setInterval(() => store.dispatch({ type: "expire_captions", now: Date.now() }), 500);

// --- protocol handlers ---------------------------------------------------------------------------

conn.on("session", (d) => store.dispatch({ type: "session", session: d.session }));
conn.on("lobby_state", (d, id) => store.dispatch({ type: "lobby_state", lobby: d.lobby,
                                                   participants: d.participants,
                                                   joined: id !== undefined }));
conn.on("peer_removed", (d) => store.dispatch({ type: "peer_removed", id: d.peer_id }));
conn.on("ice_servers", (d) => { mesh.iceServers = d.ice_servers; });  // a fresh TURN credential
conn.on("chat", (d) => store.dispatch({ type: "stored", message: d }));
conn.on("transcript", (d) => store.dispatch(d.final  // announced if it is news, not history
  ? { type: "stored", message: d, live: Date.now() / 1000 - d.end < 30 }
  : { type: "interim", transcript: d, at: Date.now() }));
conn.on("bot_status", (d) => store.dispatch({ type: "bot_status", status: d }));
conn.on("error", (d, id) => { if (!id) notify("error", d.message); });

function notify(kind, text) { store.dispatch({ type: "notice", notice: text ? { kind, text } : null }); }

function welcomed(data) {
  store.dispatch({ type: "session", session: data.session });
  mesh.myId = data.session.session_id;
  mesh.iceServers = data.ice_servers || [];
  mesh.icePolicy = data.ice_policy === "relay" ? "relay" : "all";
  const current = store.state.lobby ? store.state.lobby.id : null;
  const resumed = data.session.lobbies.includes(current) ? current
    : data.session.lobbies.includes(linkedLobby()) ? linkedLobby() : data.session.lobbies[0];
  if (resumed) {
    // The server puts a returning session back in its lobby by itself: lobby_state and a
    // peer_added for every member follow this frame at once (docs/protocol.md). Be ready for
    // them now, before anything is awaited; the microphone joins the connections when ready.
    mesh.lobbyId = resumed;
    history.replaceState(null, "", `#lobby=${resumed}`);
    if (!microphone) startMicrophone();
    refreshBots();
  } else if (current) {  // the server no longer has us in it (the grace period passed)
    leaveLocally();
    tryJoinFromLink();
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

async function refreshDevices() {
  try { store.dispatch({ type: "devices", devices: await listDevices() }); } catch { /* none */ }
}

// opens the chosen microphone and hands its track to every connection (no renegotiation)
async function startMicrophone() {
  try {
    const stream = await openMicrophone(store.state.input, store.state.sound);
    const old = microphone;
    microphone = stream;
    const [track] = stream.getAudioTracks();
    track.enabled = store.state.mic !== "muted" || store.state.talking;
    await mesh.setTrack(track);
    audio.attach("me", stream, { play: false });
    if (old) for (const t of old.getTracks()) t.stop();
    if (store.state.mic !== "muted") store.dispatch({ type: "mic", mic: "on" });
    refreshDevices();  // labels are only known once the page may use a microphone
  } catch (e) {
    const denied = e.name === "NotAllowedError" || e.name === "SecurityError";
    store.dispatch({ type: "mic", mic: denied ? "denied" : "unavailable" });
    notify("error", microphoneProblem(e));
  }
}

function stopMicrophone() {
  mesh.setTrack(null);
  if (microphone) for (const t of microphone.getTracks()) t.stop();
  microphone = null;
  audio.detach("me");
  store.dispatch({ type: "mic", mic: "off" });
}

async function toggleTest() {
  if (testStream) {
    for (const t of testStream.getTracks()) t.stop();
    testStream = null;
    audio.detach("test");
    store.dispatch({ type: "test_level", level: null });
    return;
  }
  try {
    testStream = await openMicrophone(store.state.input, store.state.sound);
    audio.attach("test", testStream, { play: false });
    store.dispatch({ type: "test_level", level: 0 });
    notify(null);
    refreshDevices();
  } catch (e) { notify("error", microphoneProblem(e)); }
}

async function join(params) {
  if (!(store.state.session && store.state.session.name)) {
    notify("info", "Pick a name first: it is how the others see you.");
    document.getElementById("name").focus();
    return;
  }
  audio.context();  // created on the click that joins: browsers allow sound after a gesture
  if (testStream) await toggleTest();
  mesh.lobbyId = params.lobby_id || null;
  const mic = startMicrophone();  // the permission prompt and the join go on side by side
  try {
    const state = await conn.request("join", params);
    mesh.lobbyId = state.lobby.id;
    history.replaceState(null, "", `#lobby=${state.lobby.id}`);
    notify(null);
    refreshBots();
  } catch (e) {
    mesh.lobbyId = store.state.lobby ? store.state.lobby.id : null;
    await mic;
    if (!store.state.lobby) stopMicrophone();
    if (e.code === "lobby_password_required" || e.code === "bad_password") {
      const known = store.state.publicLobbies.find((lb) => lb.id === params.lobby_id);
      store.dispatch({ type: "prompt", prompt: { params, name: known ? known.name : params.lobby_name || null } });
      notify("error", e.message);
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
  for (const id of [...audio.nodes.keys()]) if (id !== "me" && id !== "test") audio.detach(id);
  stopMicrophone();
  store.dispatch({ type: "left" });
  history.replaceState(null, "", location.pathname + location.search);
  refreshLobbies();
}

// what the others hear: the track is on while unmuted, or while Space is held (push-to-talk)
function applyMute() {
  const s = store.state;
  const on = s.mic === "on" || (s.mic === "muted" && s.talking);
  if (microphone) for (const t of microphone.getAudioTracks()) t.enabled = on;
}

function toggleMute() {
  const s = store.state;
  if (s.mic === "denied" || s.mic === "unavailable") { startMicrophone(); return; }  // a listener
  if (!(s.mic === "on" || s.mic === "muted")) return;
  store.dispatch({ type: "mic", mic: s.mic === "on" ? "muted" : "on" });
  applyMute();
}

function setTalking(talking) {
  if (store.state.mic !== "muted" || store.state.talking === talking) return;
  store.dispatch({ type: "talking", talking });
  applyMute();
}

async function chooseInput(id) {
  store.dispatch({ type: "input", id });
  if (microphone) await startMicrophone();  // mid-call: replaceTrack, no new offer
  else if (testStream) { await toggleTest(); await toggleTest(); }
}

const SOUND_KEY = "voicebot.sound";

// echo cancellation, noise suppression, automatic gain: remembered, and applied at once
async function setSound(change) {
  store.dispatch({ type: "sound", sound: change });
  localStorage.setItem(SOUND_KEY, JSON.stringify(store.state.sound));
  const track = microphone ? microphone.getAudioTracks()[0] : null;
  if (track && !(await applySound(track, store.state.sound))) await startMicrophone();  // replaceTrack
  else if (testStream) { await toggleTest(); await toggleTest(); }
}

function loadSound() {
  try {
    const saved = JSON.parse(localStorage.getItem(SOUND_KEY) || "{}");
    const known = Object.keys(initialState.sound).filter((k) => typeof saved[k] === "boolean");
    if (known.length) store.dispatch({ type: "sound", sound: Object.fromEntries(known.map((k) => [k, saved[k]])) });
  } catch { /* unreadable: the defaults */ }
}

async function chooseOutput(id) {
  store.dispatch({ type: "output", id });
  await audio.setSink(id);
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

function setPeerVolume(id, volume) {
  audio.setVolume(id, volume);
  store.dispatch({ type: "volume", id, volume });
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

async function copyTranscript() {
  const text = store.state.messages.filter((m) => m.segment_id)
    .map((m) => `${m.speaker_name}: ${m.text}`).join("\n");
  try {
    await navigator.clipboard.writeText(text);
    notify("info", "The transcript is on the clipboard.");
  } catch { notify("error", "The browser did not allow copying."); }
}

setInterval(() => (store.state.lobby ? refreshBots() : refreshLobbies()), 5000);

// --- wiring ----------------------------------------------------------------------------------------

const actions = { join, removeBot, setPeerVolume };
store.subscribe((s, prev) => render(s, prev, actions));

const $ = (id) => document.getElementById(id);
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
$("password-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const { params } = store.state.prompt || {};
  store.dispatch({ type: "prompt", prompt: null });
  if (params) join({ ...params, password: $("lobby-password").value });
});
$("prompt-cancel").addEventListener("click", () => store.dispatch({ type: "prompt", prompt: null }));
$("chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("chat-input");
  if (await sendChat(input.value)) input.value = "";
});
$("leave").addEventListener("click", leave);
$("mute").addEventListener("click", toggleMute);
loadSound();
for (const box of document.querySelectorAll("fieldset.sound")) {  // its switches: view.js
  box.addEventListener("change", (e) => {
    if (e.target.classList.contains("sound-switch")) setSound({ [e.target.name]: e.target.checked });
  });
  box.addEventListener("click", (e) => {
    if (e.target.classList.contains("sound-raw")) {
      setSound({ echoCancellation: false, noiseSuppression: false, autoGainControl: false });
    }
  });
}
$("copy").addEventListener("click", () => navigator.clipboard?.writeText(location.href));
$("copy-transcript").addEventListener("click", copyTranscript);
$("take-over").addEventListener("click", () => conn.takeOver());
$("mic-test").addEventListener("click", toggleTest);
$("captions-on").addEventListener("change", (e) => store.dispatch({ type: "captions_on", on: e.target.checked }));
$("caption-size").addEventListener("change", (e) => store.dispatch({ type: "caption_size", size: e.target.value }));
$("add-bot").addEventListener("click", () => addBot($("bot-kind").value));
$("bot-kind").addEventListener("change", () => renderBotOptions(store.state));
for (const el of document.querySelectorAll(".input-select")) {
  el.addEventListener("change", (e) => chooseInput(e.target.value));
}
for (const el of document.querySelectorAll(".output-select")) {
  el.addEventListener("change", (e) => chooseOutput(e.target.value));
}
for (const btn of document.querySelectorAll("[data-download]")) {
  btn.addEventListener("click", () => download(btn.dataset.download));
}
navigator.mediaDevices?.addEventListener?.("devicechange", refreshDevices);

// keyboard: M mutes and unmutes; Space held talks while muted — not while typing
const typing = (e) => e.target.closest && e.target.closest("input, textarea, select, [contenteditable]");
document.addEventListener("keydown", (e) => {
  if (!store.state.lobby || typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.code === "KeyM" && !e.repeat) { e.preventDefault(); toggleMute(); }
  if (e.code === "Space" && !(e.target.closest && e.target.closest("button"))) {
    e.preventDefault();
    setTalking(true);
  }
});
document.addEventListener("keyup", (e) => { if (e.code === "Space") setTalking(false); });
window.addEventListener("blur", () => setTalking(false));

// the first picture, before any state changes
render(store.state, { ...store.state, publicLobbies: null, devices: null, testLevel: undefined,
                      prompt: undefined, announcement: undefined, sound: null }, actions);
if (window.matchMedia("(max-width: 720px)").matches) $("side").open = false;  // captions first
refreshLobbies();
refreshDevices();
conn.start();
window.voicebot = { store, conn, mesh, audio, ServerError };  // for debugging and the tests
