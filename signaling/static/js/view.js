// The view: functions of the state that render it into the page. Nothing here changes state;
// user actions arrive as the `actions` object. Everything user-supplied is put on the page as
// text (textContent), never as HTML.

export function h(tag, props = {}, ...children) {
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
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);

function time(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

const STATUS_TEXT = { connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…",
                      replaced: "Open in another tab", ended: "Disconnected" };
// a peer connection's state, in words (a connected one says how its audio travels)
const PEER_TEXT = { connecting: "connecting", reconnecting: "reconnecting", closed: "left" };
const relayed = (path) => path && (path.local === "relay" || path.remote === "relay");

function peerState(peer, path) {
  if (peer === "connected") {
    const title = path ? `candidates: ${path.local} (here) and ${path.remote} (there)` : "";
    return h("span", { className: "muted peer-state connected", title },
             relayed(path) ? "relayed" : path ? "direct" : "connected");
  }
  if (peer === "failed") {  // what an operator can do about it
    return h("span", { className: "peer-state failed" }, "failed: needs a ",
             h("a", { href: "docs/deploy.md", target: "_blank" }, "TURN server"));
  }
  return h("span", { className: `muted peer-state ${peer}` }, PEER_TEXT[peer] || peer);
}
const BOT_STATUS = { pending: "waiting", starting: "starting", loading: "loading model",
                     live: "live", lagging: "lagging", failed: "failed" };

export function render(s, prev, actions) {
  renderStatus(s);
  renderNotice(s);
  renderScreens(s);
  if (s.publicLobbies !== prev.publicLobbies || s.session !== prev.session) renderLobbies(s, actions);
  if (s.prompt !== prev.prompt) renderPrompt(s);
  if (s.devices !== prev.devices || s.input !== prev.input || s.output !== prev.output) renderDevices(s);
  if (s.sound !== prev.sound) renderSound(s);
  if (s.testLevel !== prev.testLevel || s.mic !== prev.mic) renderTest(s);
  if (s.announcement !== prev.announcement) $("announcer").textContent = s.announcement;
  renderRoom(s, prev, actions);
}

function renderStatus(s) {
  const el = $("conn");
  el.textContent = STATUS_TEXT[s.conn];
  el.dataset.state = s.conn;
  $("replaced").hidden = !(s.conn === "replaced" || s.conn === "ended");
  $("replaced-text").textContent = s.conn === "replaced"
    ? "This lobby is open in another tab or window, so this one has stopped."
    : "The server ended this connection.";
  $("take-over").textContent = s.conn === "replaced" ? "Use it here" : "Connect again";
  $("hear").hidden = !(s.audioBlocked && s.lobby);
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
  $("me").textContent = s.session && s.session.name ? `You are ${s.session.name}` : "";
  $("name-form").classList.toggle("compact", !!(s.session && s.session.name));
  $("create-card").hidden = !(s.session && s.session.name);
}

function renderLobbies(s, actions) {
  const named = !!(s.session && s.session.name);
  $("lobbies").replaceChildren(...(s.publicLobbies.length ? s.publicLobbies.map((lb) => h("li", {},
    h("span", { className: "lobby-name" }, lb.name),
    h("span", { className: "muted" }, `${lb.participant_count}/${lb.max_participants}`,
      lb.has_password ? " · password" : ""),
    h("button", { type: "button", title: named ? "" : "set your name first",
                  "aria-label": `Join ${lb.name}`, onclick: () => actions.join({ lobby_id: lb.id }) },
      "Join"))) :
    [h("li", { className: "muted" }, named ? "No public lobbies yet: create one."
                                          : "No public lobbies yet: set your name, then create one.")]));
}

function renderPrompt(s) {
  $("prompt").hidden = !s.prompt;
  if (!s.prompt) return;
  const name = s.prompt.name || "This lobby";
  $("prompt-title").textContent = `${name} needs a password`;
  $("prompt-join").textContent = s.prompt.name ? `Join ${s.prompt.name}` : "Join";
  $("lobby-password").focus();
}

function renderDevices(s) {
  const fill = (select, list, chosen, fallback) => {
    select.replaceChildren(h("option", { value: "" }, fallback),
      ...list.map((d) => h("option", { value: d.deviceId, selected: d.deviceId === chosen }, d.label)));
    select.value = chosen;
  };
  for (const el of document.querySelectorAll(".input-select")) {
    fill(el, s.devices.inputs, s.input, "Default microphone");
  }
  for (const el of document.querySelectorAll(".output-select")) {
    fill(el, s.devices.outputs, s.output, "Default speaker");
    el.disabled = !("setSinkId" in HTMLMediaElement.prototype);
  }
}

const SOUND_SWITCHES = { echoCancellation: "Echo cancellation", noiseSuppression: "Noise suppression",
                         autoGainControl: "Automatic gain" };

// the microphone's processing: the same switches before the call and in it
function renderSound(s) {
  for (const box of document.querySelectorAll("fieldset.sound")) {
    if (box.childElementCount) continue;
    box.append(h("legend", {}, "Sound processing"),
      ...Object.entries(SOUND_SWITCHES).map(([name, label]) => h("label", { className: "inline" },
        h("input", { type: "checkbox", className: "sound-switch", name }), ` ${label}`)),
      h("button", { type: "button", className: "small secondary sound-raw",
                    title: "all three off: music, instruments, a podcast microphone" },
        "Music / raw sound"));
  }
  for (const el of document.querySelectorAll(".sound-switch")) el.checked = s.sound[el.name];
  const raw = Object.values(s.sound).every((on) => !on);
  for (const el of document.querySelectorAll(".sound-raw")) el.setAttribute("aria-pressed", String(raw));
}

function renderTest(s) {
  const testing = s.testLevel !== null;
  $("mic-test").textContent = testing ? "Stop test" : "Test microphone";
  $("test-meter").value = testing ? Math.min(s.testLevel, 0.3) : 0;
  $("test-text").textContent = !testing ? "" : s.testLevel > 0.02 ? "We hear you." : "Say something…";
}

function renderRoom(s, prev, actions) {
  if (!s.lobby) return;
  if (s.lobby !== prev.lobby) {
    $("lobby-title").textContent = s.lobby.name;
    $("lobby-kind").textContent = [s.lobby.private ? "private" : "public",
                                   s.lobby.has_password ? "password" : null].filter(Boolean).join(" · ");
  }
  if (s.participants !== prev.participants || s.levels !== prev.levels ||
      s.peerState !== prev.peerState || s.volumes !== prev.volumes || s.mic !== prev.mic ||
      s.talking !== prev.talking) {
    renderParticipants(s, actions);
  }
  if (s.messages !== prev.messages) renderMessages(s);
  if (s.captions !== prev.captions || s.captionsOn !== prev.captionsOn ||
      s.captionSize !== prev.captionSize) renderCaptions(s);
  if (s.bots !== prev.bots || s.kinds !== prev.kinds) { renderBots(s, actions); renderLag(s); }
  const mute = $("mute");
  const muted = s.mic === "muted" && !s.talking;
  // a listener (no microphone, or it was refused) can add one without leaving
  const listening = s.mic === "denied" || s.mic === "unavailable";
  mute.textContent = listening ? "Add microphone" : muted ? "Unmute" : "Mute";
  mute.disabled = !(s.mic === "on" || s.mic === "muted" || listening);
  mute.setAttribute("aria-pressed", String(muted));
}

function renderParticipants(s, actions) {
  const myId = s.session && s.session.session_id;
  const sending = s.mic === "on" || (s.mic === "muted" && s.talking);
  $("people-title").textContent = `People (${s.participants.length})`;
  $("participants").replaceChildren(...s.participants.map((p) => {
    const isMe = p.session_id === myId;
    const level = isMe ? (sending ? s.levels.me || 0 : 0) : s.levels[p.session_id] || 0;
    const volume = s.volumes[p.session_id] ?? 1;
    const peer = isMe ? "me" : s.peerState[p.session_id] || "connecting";
    const path = isMe ? null : s.peerPath[p.session_id];
    return h("li", { className: "participant", dataset: {
        sessionId: p.session_id, level: level.toFixed(4), speaking: level > 0.02, peer,
        path: path ? `${path.local}/${path.remote}` : "" } },
      h("span", { className: "dot", title: level > 0.02 ? "speaking" : "" }),
      h("span", { className: "pname" }, p.name, isMe ? " (you)" : ""),
      p.bot ? h("span", { className: "badge" }, "bot") : null,
      level > 0.02 ? h("span", { className: "sr-only" }, "speaking") : null,
      !p.connected ? h("span", { className: "muted" }, "away")
        : !isMe ? peerState(peer, path) : null,
      isMe ? (s.mic === "muted" && !s.talking ? h("span", { className: "muted" }, "muted") :
              s.mic === "denied" || s.mic === "unavailable" ? h("span", { className: "muted" }, "listening") : null)
        : h("span", { className: "volume" },
            h("button", { type: "button", className: "small secondary", title: "mute for me",
                          "aria-label": `${volume === 0 ? "unmute" : "mute"} ${p.name} for me`,
                          onclick: () => actions.setPeerVolume(p.session_id, volume === 0 ? 1 : 0) },
              volume === 0 ? "Unmute" : "Mute"),
            h("input", { type: "range", min: 0, max: 1, step: 0.05, value: volume,
                         "aria-label": `volume of ${p.name}`,
                         oninput: (e) => actions.setPeerVolume(p.session_id, Number(e.target.value)) })));
  }));
}

function captionLabel(t) {
  if (t.task === "translate") return `caption · ${t.language || "?"}→en`;
  return t.language && t.language !== "en" ? `caption · ${t.language}` : "caption";
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

function renderCaptions(s) {
  const box = $("captions");
  box.hidden = !s.captionsOn;
  box.dataset.size = s.captionSize;
  const live = Object.values(s.captions);
  box.replaceChildren(...(live.length ? live.map((c) => h("p", { className: "caption",
                                                               dataset: { speaker: c.speaker_id } },
    h("span", { className: "who" }, c.speaker_name),
    c.language && (c.language !== "en" || c.task === "translate")
      ? h("span", { className: "badge" }, captionLabel(c)) : null,
    h("span", { className: "text" }, c.text))) :
    [h("p", { className: "muted" }, "Live captions appear here while people speak.")]));
}

function renderLag(s) {
  const lagging = Object.values(s.bots).filter((b) => b.status === "lagging");
  const el = $("lag");
  el.hidden = !lagging.length;
  el.textContent = lagging.map((b) => `${b.name || b.kind} is behind: ${b.detail}`).join(" ");
}

function renderBots(s, actions) {
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
    h("button", { type: "button", className: "small secondary", "aria-label": `remove ${b.name || b.kind}`,
                  onclick: () => actions.removeBot(b.bot_id) }, "Remove"))) :
    [h("li", { className: "muted" }, "No bots in this lobby.")]));
}

// a menu for each setting of the chosen kind that has a fixed set of values (model, task…);
// a setting whose choices depend on another (a model's languages) offers only those. A list
// setting (keywords…) and a required one are a text field; a list is written comma-separated
export function renderBotOptions(s) {
  const kind = s.kinds.find((k) => k.kind === $("bot-kind").value);
  const box = $("bot-options");
  const key = kind ? kind.kind : "";
  const typing = document.activeElement;
  // a state update while someone types in a field must not take the field from under them
  if (box.dataset.kind === key && typing && typing.tagName === "INPUT" && box.contains(typing)) return;
  const previous = box.dataset.kind === key ? Object.fromEntries(
    [...box.querySelectorAll("select, input")].map((el) => [el.name, el.value])) : {};
  box.dataset.kind = key;
  const fields = kind ? Object.entries(kind.config || {}).filter(
    ([, spec]) => spec.choices || spec.type === "array" || spec.required) : [];
  const written = (spec) => Array.isArray(spec.default) ? spec.default.join(", ")
    : spec.default === null || spec.default === undefined ? "" : String(spec.default);
  const value = (name, spec) => previous[name] ?? written(spec);
  const offered = (name, spec) => {
    for (const [dep, table] of Object.entries(spec.choices_by || {})) {
      const depSpec = kind.config[dep];
      const allowed = table[depSpec ? value(dep, depSpec) : ""];
      if (allowed) return spec.choices.filter((c) => allowed.includes(c));
    }
    return spec.choices;
  };
  box.replaceChildren(...fields.map(([name, spec]) => {
    const label = `${kind.kind} ${name}`;
    const dataset = { type: spec.type, items: spec.items || "" };
    if (!spec.choices || spec.type === "array") {
      return h("label", { title: spec.help || "" }, name + (spec.required ? " *" : ""),
        h("input", { name, dataset, value: value(name, spec), required: !!spec.required,
                     type: ["integer", "number"].includes(spec.type) ? "number" : "text",
                     placeholder: spec.type === "array" ? "comma-separated" : spec.help || "",
                     "aria-label": label }));
    }
    const choices = offered(name, spec);
    const current = choices.map(String).includes(value(name, spec)) ? value(name, spec)
      : choices.map(String).includes(String(spec.default)) ? String(spec.default) : String(choices[0]);
    return h("label", { title: spec.help || "" }, name,
      h("select", { name, dataset, "aria-label": label, onchange: () => renderBotOptions(s) },
        choices.map((c) => h("option", { value: c, selected: String(c) === current }, String(c)))));
  }));
}

// the settings as the schema types them: a list from its comma-separated items, numbers as numbers
export function botConfig() {
  const config = {};
  const typed = (text, type) => ["integer", "number"].includes(type) ? Number(text)
    : type === "boolean" ? text === "true" : text;
  for (const el of $("bot-options").querySelectorAll("select, input")) {
    const { type, items } = el.dataset;
    if (type === "array") {
      config[el.name] = el.value.split(",").map((x) => x.trim()).filter(Boolean).map((x) => typed(x, items));
    } else if (el.value !== "" || el.required) {
      config[el.name] = typed(el.value, type);
    }
  }
  return config;
}
