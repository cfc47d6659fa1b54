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

export class Mesh {
  constructor(conn, { onStream, onPeerState }) {
    this.conn = conn;
    this.onStream = onStream;
    this.onPeerState = onPeerState;
    this.peers = new Map();   // session_id -> {pc, sender, makingOffer, pendingIce}
    this.lobbyId = null;
    this.myId = null;
    this.track = null;        // the microphone track every connection sends
    this.iceServers = [];     // the server's list (welcome, ice_servers): nothing else, ever
    this.icePolicy = "all";   // or "relay", as the server says
    this.offers = 0;          // offers made or answered: a device switch must make none
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
    this.drop(peerId);
    const pc = new RTCPeerConnection({ iceServers: this.iceServers,
                                       iceTransportPolicy: this.icePolicy });
    const sender = offerer
      ? pc.addTransceiver(this.track || "audio", { direction: "sendrecv" }).sender : null;
    const entry = { pc, sender, makingOffer: false, pendingIce: [] };
    pc.onicecandidate = ({ candidate }) => {
      this.conn.send("ice", { lobby_id: this.lobbyId, peer_id: peerId,
                              candidate: candidate ? candidate.toJSON() : null });
    };
    pc.ontrack = ({ streams, track }) => this.onStream(peerId, streams[0] || new MediaStream([track]));
    pc.onconnectionstatechange = () => this.onPeerState(peerId, pc.connectionState);
    this.peers.set(peerId, entry);
    this.onPeerState(peerId, "new");
    return entry;
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

  drop(peerId) {
    const entry = this.peers.get(peerId);
    if (!entry) return;
    entry.pc.close();
    this.peers.delete(peerId);
    this.onPeerState(peerId, "closed");
  }

  closeAll() {
    for (const id of [...this.peers.keys()]) this.drop(id);
  }
}
