// The browser's side of the lobby mesh: one RTCPeerConnection per peer.
// The joiner offers (the server says who: peer_added.create_offer). On glare, the side with
// the smaller session id is polite: it rolls back its own offer and answers.

export class Mesh {
  constructor(conn, { onStream, onPeerState }) {
    this.conn = conn;
    this.onStream = onStream;
    this.onPeerState = onPeerState;
    this.peers = new Map();   // session_id -> {pc, makingOffer, pendingIce}
    this.lobbyId = null;
    this.myId = null;
    this.localStream = null;
    conn.on("peer_added", (d) => this.added(d));
    conn.on("peer_removed", (d) => d.lobby_id === this.lobbyId && this.drop(d.peer_id));
    conn.on("sdp", (d) => this.description(d));
    conn.on("ice", (d) => this.candidate(d));
  }

  setLocalStream(stream) { this.localStream = stream; }

  async added({ lobby_id, peer, create_offer }) {
    if (lobby_id !== this.lobbyId) return;
    const entry = this.create(peer.session_id);
    if (create_offer) await this.offer(peer.session_id, entry);
  }

  create(peerId) {
    this.drop(peerId);
    const pc = new RTCPeerConnection({ iceServers: [] });
    const entry = { pc, makingOffer: false, pendingIce: [] };
    if (this.localStream) {
      for (const track of this.localStream.getAudioTracks()) pc.addTrack(track, this.localStream);
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    pc.onicecandidate = ({ candidate }) => {
      this.conn.send("ice", { lobby_id: this.lobbyId, peer_id: peerId,
                              candidate: candidate ? candidate.toJSON() : null });
    };
    pc.ontrack = ({ streams, track }) => this.onStream(peerId, streams[0] || new MediaStream([track]));
    pc.onconnectionstatechange = () => this.onPeerState(peerId, pc.connectionState);
    this.peers.set(peerId, entry);
    return entry;
  }

  async offer(peerId, entry) {
    try {
      entry.makingOffer = true;
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
      if (!entry) entry = this.create(peer_id);
      await entry.pc.setRemoteDescription(description);  // rolls back our offer if needed
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
