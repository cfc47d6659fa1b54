// Sound in and out: the peers' audio elements and level meters, the microphone, the devices.

// Browsers play sound only after the person has clicked or pressed a key on the page: a page
// reloaded mid-call has not, and its play() is refused (NotAllowedError). Nothing stays
// silently paused: a refusal is reported (onBlocked(true)), and unblock(), run on the person's
// next click or key press, plays every peer again and resumes the meters' AudioContext.
export class Audio {
  constructor(onBlocked = () => {}) {
    this.ctx = null;
    this.nodes = new Map();    // session_id (or "me", "test") -> {el, analyser, buf}
    this.sinkId = "";
    this.blocked = false;
    this.onBlocked = onBlocked;
  }

  context() {
    if (!this.ctx) this.ctx = new AudioContext();
    if (this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
    return this.ctx;
  }

  refused(e) {
    if (e.name !== "NotAllowedError" || this.blocked) return;
    console.info("audio: the browser refused to play until the page is clicked");
    this.blocked = true;
    this.onBlocked(true);
  }

  // on a click or key press: every peer that the browser held back plays now
  async unblock() {
    if (this.ctx && this.ctx.state === "suspended") await this.ctx.resume().catch(() => {});
    const held = [...this.nodes.values()].filter((n) => n.el && n.el.paused);
    try {
      await Promise.all(held.map((n) => n.el.play()));
    } catch (e) { return; }  // still refused: the next click tries again
    if (this.blocked) { this.blocked = false; this.onBlocked(false); }
  }

  // plays a peer's stream (or only meters it: the microphone) and measures its level
  attach(id, stream, { play = true, volume = 1 } = {}) {
    this.detach(id);
    let el = null;
    if (play) {
      el = new window.Audio();
      el.autoplay = true;
      el.srcObject = stream;  // Chrome feeds WebAudio from a remote stream only while it plays
      el.volume = volume;
      el.muted = volume === 0;
      if (this.sinkId && el.setSinkId) el.setSinkId(this.sinkId).catch(() => {});
      el.play().catch((e) => this.refused(e));
    }
    const ctx = this.context();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 1024;
    ctx.createMediaStreamSource(stream).connect(analyser);
    this.nodes.set(id, { el, analyser, buf: new Float32Array(analyser.fftSize) });
  }

  detach(id) {
    const n = this.nodes.get(id);
    if (!n) return;
    if (n.el) { n.el.pause(); n.el.srcObject = null; }
    this.nodes.delete(id);
  }

  setVolume(id, volume) {
    const n = this.nodes.get(id);
    if (n && n.el) { n.el.volume = volume; n.el.muted = volume === 0; }
  }

  // the speaker every peer plays on (no renegotiation: only the local output changes)
  async setSink(deviceId) {
    this.sinkId = deviceId;
    await Promise.all([...this.nodes.values()].filter((n) => n.el && n.el.setSinkId)
      .map((n) => n.el.setSinkId(deviceId).catch(() => {})));
  }

  level(id) {
    const n = this.nodes.get(id);
    if (!n) return 0;
    n.analyser.getFloatTimeDomainData(n.buf);
    let sum = 0;
    for (const x of n.buf) sum += x * x;
    return Math.sqrt(sum / n.buf.length);
  }

  levels() {
    const out = {};
    for (const id of this.nodes.keys()) if (id !== "test") out[id] = this.level(id);
    return out;
  }
}

// the microphone: a MediaStream, or an error the user can act on
export async function openMicrophone(deviceId, sound = {}) {
  if (!navigator.mediaDevices?.getUserMedia) {
    const err = new Error("This browser can't capture audio here: open the page over https:// (or on localhost).");
    err.name = "Unavailable";
    throw err;
  }
  const audio = { ...sound, ...(deviceId ? { deviceId: { exact: deviceId } } : {}) };
  return navigator.mediaDevices.getUserMedia({ audio });
}

// the microphone's processing changed mid-call: applied to the live track where the browser
// can (Firefox); where it says yes but changes nothing (Chromium), false: open it anew
export async function applySound(track, sound) {
  try { await track.applyConstraints(sound); } catch { return false; }
  const now = track.getSettings();
  return Object.entries(sound).every(([k, v]) => now[k] === undefined || now[k] === v);
}

export function microphoneProblem(e) {
  if (e.name === "NotAllowedError" || e.name === "SecurityError") {
    return "Microphone access was refused, so nobody can hear you (you can still listen). " +
      "Allow the microphone for this site in the browser's address bar or site settings, then " +
      "press \"Test microphone\" or join again.";
  }
  if (e.name === "NotFoundError" || e.name === "OverconstrainedError") {
    return "No microphone was found. Plug one in (or pick another below); you can still listen.";
  }
  if (e.name === "NotReadableError") {
    return "The microphone is busy in another program. Close it there, then try again.";
  }
  return e.message || "The microphone could not be opened.";
}

export async function listDevices() {
  if (!navigator.mediaDevices?.enumerateDevices) return { inputs: [], outputs: [] };
  const all = await navigator.mediaDevices.enumerateDevices();
  // "default" and "communications" stand for another entry: the empty choice is the default
  const pick = (kind, fallback) => all.filter((d) => d.kind === kind && d.deviceId &&
                                                    !["default", "communications"].includes(d.deviceId))
    .map((d, i) => ({ deviceId: d.deviceId, label: d.label || `${fallback} ${i + 1}` }));
  return { inputs: pick("audioinput", "Microphone"), outputs: pick("audiooutput", "Speaker") };
}
