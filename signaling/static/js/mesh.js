// The browser's side of the lobby mesh: one RTCPeerConnection per peer.
// The joiner offers (the server says who: peer_added.create_offer). On glare, the side with
// the smaller session id is polite: it rolls back its own offer and answers.
//
// Every connection has one audio transceiver that sends, whether or not the microphone is
// ready yet: the microphone (or another one, picked mid-call) goes in with replaceTrack, which
// needs no new offer. So a page that resumes its lobby (a reload) can answer the server's
// peer_added at once, before the user's microphone permission has come back. The offerer
// adds the transceiver; the answerer takes the one the offer creates (a transceiver added
// before an offer arrives would not be matched to it, and would never be negotiated).
//
// Recovery (docs/protocol.md, "Restarting a connection"): a connection that fails, stays
// disconnected for RESTART_AFTER, or has not connected CONNECT_WITHIN after it was made, is
// replaced: either side closes it and offers on a new
// RTCPeerConnection (bots can't restart ICE in place, so nobody does). An offer naming another
// DTLS fingerprint than the connection's remote description is such a new connection, and is
// answered on a new RTCPeerConnection. Trouble first checks the signaling socket: when the
// network under us changed, the socket is dead too, and reconnecting restarts every connection.

const RESTART_AFTER = 1500;  // ms a connection may stay "disconnected" before it is replaced
const CONNECT_WITHIN = 20000;  // ms a new connection may take to connect before it counts as failed
const MAX_RESTARTS = 2;      // replacements of a failed connection before we give up ("failed")

// the DTLS fingerprints of an SDP: others in an offer mean a new connection (an ICE restart
// in place keeps them, and Chromium answers it on the same RTCPeerConnection)
function identity(sdp) {
  return (sdp.match(/^a=fingerprint:\S+ \S+/gm) || []).sort().join(" ");
}

export class Mesh {
  constructor(conn, { onStream, onPeerState }) {
    // onPeerState(peerId, state, path): state is connecting, connected, reconnecting, failed
    // or closed; path {local, remote} names the candidate types of the pair in use
    this.conn = conn;
    this.onStream = onStream;
    this.onPeerState = onPeerState;
    this.peers = new Map();   // session_id -> {peerId, pc, sender, makingOffer, pendingIce, …}
    this.lobbyId = null;
    this.myId = null;
    this.track = null;        // the microphone track every connection sends
    this.iceServers = [];     // the server's list (welcome, ice_servers): nothing else, ever
    this.icePolicy = "all";   // or "relay", as the server says
    this.offers = 0;          // offers made or answered: a device switch must make none
    this.restarts = 0;        // connections replaced after trouble (the tests count them)
    // peer id -> connections to it in a row that failed or were replaced without connecting,
    // whichever side replaced them: kept across reconnects (a new peer_added), so a pair that
    // can't connect gives up in the end
    this.attempts = new Map();
    conn.on("peer_added", (d) => this.added(d));
    conn.on("peer_removed", (d) => d.lobby_id === this.lobbyId && this.drop(d.peer_id));
    conn.on("sdp", (d) => this.description(d));
    conn.on("ice", (d) => this.candidate(d));
  }

  // the track every peer hears from now on (null: silence); no renegotiation
  async setTrack(track) {
    this.track = track;
    await Promise.all([...this.peers.values()].filter((e) => e.sender)
      .map((e) => e.sender.replaceTrack(track).catch((err) => console.debug("replaceTrack", err))));
  }

  // after a remote offer: send on the transceiver it negotiated
  async adopt(entry) {
    const t = entry.pc.getTransceivers().find((x) => x.mid !== null && !x.stopped);
    if (!t || t.sender === entry.sender) return;
    t.direction = "sendrecv";
    entry.sender = t.sender;
    await t.sender.replaceTrack(this.track);
  }

  async added({ lobby_id, peer, create_offer }) {
    if (lobby_id !== this.lobbyId) return;
    const entry = this.create(peer.session_id, create_offer);
    if (create_offer) await this.offer(peer.session_id, entry);
  }

  create(peerId, offerer) {
    this.drop(peerId, true);
    // a STUN server comes with null credentials: leave them out (Chromium would send "null")
    const iceServers = this.iceServers.map(({ urls, username, credential }) =>
      (username == null ? { urls } : { urls, username, credential }));
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: this.icePolicy });
    const sender = offerer
      ? pc.addTransceiver(this.track || "audio", { direction: "sendrecv" }).sender : null;
    const entry = { peerId, pc, sender, makingOffer: false, pendingIce: [], path: null, timer: null,
                    deadline: null, gaveUp: false, counted: false };
    pc.onicecandidate = ({ candidate }) => {
      this.conn.send("ice", { lobby_id: this.lobbyId, peer_id: peerId,
                              candidate: candidate ? candidate.toJSON() : null });
    };
    pc.ontrack = ({ streams, track }) => this.onStream(peerId, streams[0] || new MediaStream([track]));
    pc.onconnectionstatechange = () => this.changed(peerId, entry);
    pc.oniceconnectionstatechange = () => this.changed(peerId, entry);
    // ICE may never say "failed" (a side whose offer was rolled back can wait in "checking"
    // for ever): a connection that has not connected in time is in trouble all the same
    entry.deadline = setTimeout(() => {
      if (this.peers.get(peerId) === entry && pc.connectionState !== "connected" && !entry.timer) {
        this.restart(peerId, entry);
      }
    }, CONNECT_WITHIN);
    this.peers.set(peerId, entry);
    this.report(peerId, entry);
    return entry;
  }

  // --- the state in words, and recovery ---

  word(entry) {
    const s = entry.pc.connectionState;
    if (s === "connected") return "connected";
    if (entry.gaveUp) return "failed";
    if ((this.attempts.get(entry.peerId) || 0) > 0 || s === "disconnected" || s === "failed") {
      return "reconnecting";
    }
    return "connecting";
  }

  report(peerId, entry) {
    this.onPeerState(peerId, this.word(entry), entry.path);
  }

  async changed(peerId, entry) {
    if (this.peers.get(peerId) !== entry) return;  // replaced or closed
    const s = entry.pc.connectionState;
    if (s === "connected") {
      this.attempts.delete(peerId);
      entry.gaveUp = false;
      clearTimeout(entry.deadline);
      clearTimeout(entry.timer);
      entry.timer = null;
      entry.path = await this.selectedPath(entry.pc);
    } else if ((s === "disconnected" || s === "failed") && !entry.timer) {
      // a dead signaling socket is found at once (and reconnecting restarts everything);
      // a connection that is only disconnected gets a moment to come back by itself
      entry.timer = setTimeout(() => this.restart(peerId, entry),
                               s === "failed" ? 0 : RESTART_AFTER);
      this.conn.probe();
    }
    if (this.peers.get(peerId) === entry) this.report(peerId, entry);
  }

  async restart(peerId, entry) {
    entry.timer = null;
    if (this.peers.get(peerId) !== entry || entry.pc.connectionState === "connected") return;
    if (!(await this.conn.probe())) {
      // the socket is reconnecting, and its peer_added will replace this connection; look
      // again later all the same, so that nothing waits on a reconnect that never comes
      if (this.peers.get(peerId) === entry && !entry.timer) {
        entry.timer = setTimeout(() => this.restart(peerId, entry), RESTART_AFTER);
      }
      return;
    }
    if (this.peers.get(peerId) !== entry) return;
    const failed = this.failed(peerId, entry);
    if (failed > MAX_RESTARTS) {
      entry.gaveUp = true;  // until the peer restarts it, or one of us reconnects
      console.debug("mesh: giving up on", peerId);
      this.report(peerId, entry);
      return;
    }
    this.restarts += 1;
    console.debug("mesh: replacing the connection to", peerId, "after", failed, "failed");
    await this.offer(peerId, this.create(peerId, true));
  }

  // counts a connection that failed (once, whichever side replaces it): how many in a row
  failed(peerId, entry) {
    if (!entry.counted && entry.pc.connectionState !== "connected") {
      entry.counted = true;
      this.attempts.set(peerId, (this.attempts.get(peerId) || 0) + 1);
    }
    return this.attempts.get(peerId) || 0;
  }

  // the candidate types of the pair a connection uses: {local, remote}, e.g. relay and prflx
  async selectedPath(pc) {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((r) => {
      if (r.type === "transport" && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
    });
    if (!pair) return null;
    const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
    return local && remote ? { local: local.candidateType, remote: remote.candidateType } : null;
  }

  async offer(peerId, entry) {
    try {
      entry.makingOffer = true;
      this.offers += 1;
      await entry.pc.setLocalDescription(await entry.pc.createOffer());
      this.sendDescription(peerId, entry.pc.localDescription);
    } finally {
      entry.makingOffer = false;
    }
  }

  sendDescription(peerId, desc) {
    this.conn.send("sdp", { lobby_id: this.lobbyId, peer_id: peerId,
                            description: { type: desc.type, sdp: desc.sdp } });
  }

  async description({ lobby_id, peer_id, description }) {
    if (lobby_id !== this.lobbyId) return;
    let entry = this.peers.get(peer_id);
    if (description.type === "offer") {
      const collision = entry && (entry.makingOffer || entry.pc.signalingState !== "stable");
      const polite = this.myId < peer_id;
      if (collision && !polite) return;          // ours wins; they will answer it
      const current = entry && !collision && entry.pc.remoteDescription;
      if (current && identity(current.sdp) !== identity(description.sdp)) {
        this.failed(peer_id, entry);  // if it never connected, it counts as a failure
        entry = this.create(peer_id, false);  // they replace it
      }
      if (!entry) entry = this.create(peer_id, false);
      this.offers += 1;
      await entry.pc.setRemoteDescription(description);  // rolls back our offer if needed
      await this.adopt(entry);
      await entry.pc.setLocalDescription(await entry.pc.createAnswer());
      this.sendDescription(peer_id, entry.pc.localDescription);
    } else if (entry && entry.pc.signalingState === "have-local-offer") {
      await entry.pc.setRemoteDescription(description);
    }
    if (entry) {
      for (const c of entry.pendingIce.splice(0)) await entry.pc.addIceCandidate(c).catch(() => {});
    }
  }

  async candidate({ lobby_id, peer_id, candidate }) {
    const entry = this.peers.get(peer_id);
    if (lobby_id !== this.lobbyId || !entry || !candidate) return;
    if (!entry.pc.remoteDescription) { entry.pendingIce.push(candidate); return; }
    await entry.pc.addIceCandidate(candidate).catch((e) => console.debug("ice", e));
  }

  drop(peerId, replaced = false) {
    if (!replaced) this.attempts.delete(peerId);
    const entry = this.peers.get(peerId);
    if (!entry) return;
    clearTimeout(entry.timer);
    clearTimeout(entry.deadline);
    entry.pc.close();
    this.peers.delete(peerId);
    if (!replaced) this.onPeerState(peerId, "closed", null);
  }

  closeAll() {
    for (const id of [...this.peers.keys()]) this.drop(id);
  }
}
