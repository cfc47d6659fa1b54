// The one WebSocket connection: session token, reconnect with jittered backoff, requests.

const TOKEN_KEY = "voicebot.token";
const PROTOCOL = "voicebot.v1";  // docs/protocol.md, "Connecting"
const TOKEN_PROTOCOL = "voicebot.bearer.";
// closes after which the session is someone else's (another tab), deleted, or kicked
const FINAL_CLOSE_CODES = new Set([4001, 4002, 4003]);

export class ServerError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

// How often a quiet socket is checked (ms): often in a call, where a network change must be
// found in a second or two (a socket whose network is gone looks open until something is sent
// on it), rarely otherwise
const HEARTBEAT_IN_CALL = 1000;
const HEARTBEAT_IDLE = 15000;

function* backoff(initial = 250, maximum = 5000) {
  for (let n = 0; ; n++) yield Math.random() * Math.min(maximum, initial * 2 ** Math.min(n, 16));
}

export class Connection {
  constructor(base, { onStatus, onWelcome, inCall = () => false }) {
    this.base = base;                // the app's base URL, ending in "/"
    this.onStatus = onStatus;
    this.onWelcome = onWelcome;
    this.inCall = inCall;            // true: check the socket every HEARTBEAT_IN_CALL
    this.handlers = new Map();
    this.pending = new Map();
    this.ws = null;
    this.nextId = 1;
    this.everConnected = false;
    this.sockets = 0;        // WebSockets opened so far (the tests count them)
    this.resume = null;
    this.probing = null;     // the ping in flight, if any
    this.abandon = null;     // ends the current socket's run at once (a dead socket)
  }

  get token() { return localStorage.getItem(TOKEN_KEY); }

  async api(path, { method = "GET", body } = {}) {
    const headers = { "Content-Type": "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const resp = await fetch(new URL(path, this.base), {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const err = data.error || {};
      throw new ServerError(err.code || String(resp.status), err.message || resp.statusText);
    }
    return data;
  }

  async ensureSession() {
    if (this.token) {
      try { await this.api("api/session"); return; } catch (e) {
        if (e.code !== "unauthorized") throw e;
        localStorage.removeItem(TOKEN_KEY);   // the server forgot us: start afresh
      }
    }
    const { token } = await this.api("api/sessions", { method: "POST", body: {} });
    localStorage.setItem(TOKEN_KEY, token);
  }

  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(fn);
  }

  async start() {
    let delays = backoff();
    for (;;) {
      this.onStatus(this.everConnected ? "reconnecting" : "connecting");
      let code = null;
      try {
        await this.ensureSession();
        code = await this.runOnce();
      } catch (e) {
        console.debug("connection attempt failed", e);
      }
      if (FINAL_CLOSE_CODES.has(code)) {
        // another tab took the session (4001), or it was removed or kicked: reconnecting
        // would only take it back, so wait until the user asks for it here
        this.onStatus(code === 4001 ? "replaced" : "ended");
        await new Promise((r) => { this.resume = r; });
        this.resume = null;
        delays = backoff();
        continue;
      }
      if (this.healthy) delays = backoff();  // a good connection resets the backoff
      await new Promise((r) => setTimeout(r, delays.next().value));
    }
  }

  // "Use it here": this tab takes the session back from the other one
  takeOver() { if (this.resume) this.resume(); }

  runOnce() {
    return new Promise((resolve) => {
      const url = new URL("ws", this.base);
      url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
      // the token travels as a subprotocol, not in the URL, which proxies and logs keep
      const ws = new WebSocket(url, [PROTOCOL, `${TOKEN_PROTOCOL}${this.token}`]);
      const opened = Date.now();
      this.healthy = false;
      let lastCheck = Date.now();
      const heartbeat = setInterval(() => {
        const every = this.inCall() ? HEARTBEAT_IN_CALL : HEARTBEAT_IDLE;
        if (ws.readyState === WebSocket.OPEN && Date.now() - lastCheck >= every - 50) {
          lastCheck = Date.now();
          this.probe();
        }
      }, HEARTBEAT_IN_CALL);
      const finish = (code) => {
        clearInterval(heartbeat);
        ws.onmessage = ws.onclose = null;
        this.abandon = null;
        this.healthy = Date.now() - opened > 5000;
        if (this.ws === ws) this.ws = null;
        for (const [, p] of this.pending) p.reject(new ServerError("disconnected", "connection lost"));
        this.pending.clear();
        resolve(code);
      };
      ws.onmessage = (ev) => this.receive(ev.data);
      ws.onclose = (ev) => finish(ev.code);
      // a socket whose network is gone would take its time to report its close: don't wait
      this.abandon = () => { ws.close(4000, "no answer"); finish(1006); };
      this.ws = ws;
      this.sockets += 1;
    });
  }

  // Is the socket alive? Peer connections ask when they are in trouble: after a network
  // change the socket still looks open, and only something sent on it finds out. A ping that
  // gets no pong within `timeout` abandons the socket (the reconnect restarts every peer
  // connection). True: the socket answered.
  async probe(timeout = 1500) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    if (!this.probing) {
      this.probing = this.request("ping", {}, timeout).then(() => true, (e) => {
        if (e.code === "timeout" && this.abandon) this.abandon();
        return false;
      }).finally(() => { this.probing = null; });
    }
    return this.probing;
  }

  receive(text) {
    let frame;
    try { frame = JSON.parse(text); } catch { return; }
    const { type, data = {}, id } = frame;
    if (type === "welcome") {
      this.everConnected = true;
      this.onStatus("connected");
      this.onWelcome(data);
    }
    if (id && this.pending.has(id)) {
      const p = this.pending.get(id);
      this.pending.delete(id);
      if (type === "error") { p.reject(new ServerError(data.code, data.message)); return; }
      p.resolve(data);
    }
    for (const fn of this.handlers.get(type) || []) {
      try { fn(data, id); } catch (e) { console.error(`handler for ${type}`, e); }
    }
  }

  send(type, data = {}) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify({ type, data }));
    return true;
  }

  request(type, data = {}, timeout = 15000) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        reject(new ServerError("disconnected", "not connected; try again in a moment"));
        return;
      }
      const id = `b${this.nextId++}`;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ServerError("timeout", `no reply to ${type}`));
      }, timeout);
      this.pending.set(id, {
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this.ws.send(JSON.stringify({ type, data, id }));
    });
  }
}
