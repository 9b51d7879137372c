"""Every protocol constant of meshcore in one place, with its unit and its source.

Timers are defaults: the trio layers take them from settings objects, which start from here.
"""

from __future__ import annotations

from typing import Final

# --- versions and names -------------------------------------------------------------------
PROTOCOL_VERSION: Final = 1
"""Carried in every control message and every handshake header; unknown versions are refused."""

PROTOCOL_NAME: Final = b"meshcore/1 pqIK-hyb X25519+MLKEM768 ChaChaPoly SHA256"
SUITES: Final = b"suites=[X25519+MLKEM768]"

# --- key and field sizes (bytes) -----------------------------------------------------------
X25519_KEY_BYTES: Final = 32
MLKEM768_PK_BYTES: Final = 1184
MLKEM768_SK_BYTES: Final = 2400
MLKEM768_CT_BYTES: Final = 1088
MLKEM768_SS_BYTES: Final = 32
PEER_ID_BYTES: Final = 32
AEAD_TAG_BYTES: Final = 16
FRAME_HEADER_BYTES: Final = 16
MAC_BYTES: Final = 16

# --- size limits (bytes) -------------------------------------------------------------------
MAX_MESSAGE_BYTES: Final = 65536
"""Largest application message one DATA frame carries (64 KiB)."""

MAX_FRAME_BYTES: Final = MAX_MESSAGE_BYTES + 256
"""Largest sealed transport frame: header, inner header, padding and tag on top of a message."""

MAX_HANDSHAKE_BYTES: Final = 4096
"""Largest handshake message (docs/crypto-spec.md §3.11)."""

MAX_CONTROL_BYTES: Final = MAX_FRAME_BYTES + 256
"""Largest relay control message: a relayed frame plus its envelope."""

MAX_CANDIDATES: Final = 16
"""Most endpoints one peer announces."""

MAX_REASON_BYTES: Final = 256
"""Longest human-readable reason (UTF-8) in a close or error message."""

REKEY_FRAGMENT_BYTES: Final = 1150
"""Rekey handshake messages travel as HANDSHAKE inner frames of at most this size (§3.8)."""

# --- key lifetimes (WireGuard, docs/crypto-spec.md §3.8) ------------------------------------------
REKEY_AFTER_S: Final = 120.0
REJECT_AFTER_S: Final = 180.0
REKEY_ATTEMPT_S: Final = 90.0
REKEY_TIMEOUT_S: Final = 5.0
REKEY_TIMEOUT_JITTER_S: Final = 0.334
MAX_TIMER_HANDSHAKES: Final = 18
KEEPALIVE_TIMEOUT_S: Final = 10.0
ZEROIZE_AFTER_S: Final = 540.0
REKEY_AFTER_MESSAGES: Final = 1 << 60
REJECT_AFTER_MESSAGES: Final = (1 << 64) - (1 << 13) - 1
OLD_KEY_RECEIVE_S: Final = REKEY_TIMEOUT_S
"""After a rekey the previous receive key stays valid this long for frames in flight."""
AEAD_FORGERY_LIMIT: Final = 1 << 20
"""Authentication failures on one key before a new handshake is forced (RFC 9001 §6.6)."""

# --- replay window (RFC 6479; Linux / wireguard-go) ----------------------------------------
REPLAY_WINDOW_BITS: Final = 8192
REPLAY_WINDOW_USABLE: Final = REPLAY_WINDOW_BITS - 64

# --- handshake state (Rosenpass, this design) ----------------------------------------------
BISCUIT_KEY_ROTATE_S: Final = 120.0
BISCUIT_MAX_AGE_S: Final = 10.0
HANDSHAKE_TIMEOUT_S: Final = 5.0
RESUME_MAX_AGE_S: Final = 300.0

# --- paths (Tailscale magicsock, RFC 9000 §8.2.4) ------------------------------------------
PATH_HEARTBEAT_S: Final = 3.0
PATH_TRUST_S: Final = 6.5
PATH_DEAD_S: Final = 15.0
PATH_VALIDATION_TIMEOUT_S: Final = 3.0
PATH_CHALLENGE_RETRY_S: Final = 1.0
DIRECT_RACE_DEADLINE_S: Final = 5.0
DIRECT_RETRY_S: Final = 60.0
DIRECT_REDIAL_S: Final = 0.05
"""A refused simultaneous-open dial is retried this often until the race deadline (docs/design.md
§5)."""

# --- session ------------------------------------------------------------------------------
RETRANSMIT_BUFFER_FRAMES: Final = 4096
"""Sealed, unacknowledged frames kept per session before `send` applies back-pressure."""
RETRANSMIT_BUFFER_BYTES: Final = 32 * 1024 * 1024
REORDER_BUFFER_FRAMES: Final = 4096
ACK_EVERY_FRAMES: Final = 32
ACK_DELAY_S: Final = 0.02

# --- relay limits (docs/design.md §3, docs/crypto-spec.md §3.11) ----------------------------------
RELAY_HELLO_DEADLINE_S: Final = 5.0
RELAY_MAX_PEERS: Final = 20000
RELAY_MAX_CIRCUITS: Final = 20000
RELAY_CONNECTIONS_PER_S_PER_IP: Final = 10.0
RELAY_CONNECTIONS_BURST_PER_IP: Final = 20
RELAY_PAIRINGS_PER_S: Final = 20.0
RELAY_PAIRINGS_BURST: Final = 5
RELAY_CIRCUIT_QUEUE_FRAMES: Final = 64
RELAY_CIRCUIT_QUEUE_BYTES: Final = 256 * 1024
RELAY_PING_INTERVAL_S: Final = 20.0
RELAY_IDLE_TIMEOUT_S: Final = 60.0

# --- wire codec field sizes (wire.py, inner.py; docs/wire-control.md) ----------------------
RELAY_NONCE_BYTES: Final = 32
"""Random nonce in the relay's authentication Challenge (docs/crypto-spec.md §3.11)."""
RELAY_AUTH_MAC_BYTES: Final = 32
"""Full HMAC-SHA256 tag a peer answers the relay's Challenge with."""
PATH_CHALLENGE_BYTES: Final = 16
"""Unpredictable data in PATH_CHALLENGE / PATH_RESPONSE inner frames (docs/crypto-spec.md §3.6)."""
MAX_REKEY_FRAGMENTS: Final = -(-MAX_HANDSHAKE_BYTES // REKEY_FRAGMENT_BYTES)
"""Most fragments one rekey handshake message is split into (4096 / 1150, rounded up)."""

# --- transport (meshcore._transport; measured in benchmarks/bench_transport.py) ----------
TRANSPORT_CONNECT_TIMEOUT_S: Final = 10.0
"""TCP connect plus WebSocket upgrade, client side."""
TRANSPORT_HANDSHAKE_TIMEOUT_S: Final = 5.0
"""A server drops a connection that has not finished its WebSocket upgrade by then."""
TRANSPORT_CLOSE_TIMEOUT_S: Final = 2.0
"""How long `aclose` waits for the remote's close frame before cutting the TCP connection."""
TRANSPORT_CANCELLED_CLOSE_S: Final = 0.5
"""An `aclose` of a caller that is already cancelled (a program shutting down) still sends its
close frame, shielded, and waits at most this long for the remote's before cutting TCP."""
TRANSPORT_ACCEPT_RETRY_S: Final = 0.1
"""A server that cannot accept for want of file descriptors or memory tries again after this
(as trio.serve_listeners does)."""
TRANSPORT_RECEIVE_QUEUE_MESSAGES: Final = 32
"""Messages read ahead of `receive()`; when full the reader stops and TCP pushes back."""

# --- inner frames (inner.py) --------------------------------------------------------------
MAX_INNER_BYTES: Final = MAX_FRAME_BYTES - FRAME_HEADER_BYTES - AEAD_TAG_BYTES
"""Largest plaintext inside a sealed transport frame (inner type, pad length, body, padding)."""

# --- relay server (meshcore.proto.matchmaker, meshcore._relay; docs/relay.md) -------------
RELAY_DEFAULT_PORT: Final = 7443
"""`meshcore-relay` listens on 127.0.0.1:7443 unless told otherwise."""
RELAY_MAX_PENDING_CONNECTIONS: Final = 1024
"""Connections accepted that have not registered yet (upgrade, HELLO/AUTH; each may cost one KEM
encapsulation). At this many the relay stops accepting and new ones wait in the kernel's
listen backlog: ~1 s of work at ~1,000 registrations/s, well within RELAY_HELLO_DEADLINE_S
(4096 made a herd time out in the relay's own queue, docs/relay.md "After a restart")."""
RELAY_ACCEPT_QUEUE_CONNECTIONS: Final = 8192
"""Connections accepted past RELAY_MAX_PENDING_CONNECTIONS that wait, in order and unread (a
socket each), for their turn; beyond them the listen backlog holds more. Without this queue a
herd overflows the backlog (somaxconn, 4096 here) and the kernel drops its SYNs, which are
retried 1, 3, 7 s later: a long tail (docs/relay.md, "After a restart")."""
RELAY_MAX_CIRCUITS_PER_PEER: Final = 64
"""Open circuits one registered peer may take part in (so one peer cannot take them all)."""
RELAY_MAX_INVITES_PER_PEER: Final = 16
"""Pending invitations one peer may have outstanding, as target and as initiator."""
RELAY_INVITE_TIMEOUT_S: Final = 10.0
"""An invitation the target has not answered by then is withdrawn (the initiator hears TIMEOUT)."""
RELAY_CONNECTION_QUEUE_BYTES: Final = 1024 * 1024
"""Relayed bytes queued towards one connection, over all its circuits (drop-tail beyond)."""
RELAY_TOTAL_QUEUE_BYTES: Final = 256 * 1024 * 1024
"""Relayed bytes queued in the whole relay (drop-tail beyond): memory stays bounded."""
RELAY_MAX_BUFFER_BYTES: Final = 256 * 1024 * 1024
"""Relayed bytes the relay holds for credited circuits, granted or queued (docs/relay.md)."""
RELAY_CIRCUIT_WINDOW_BYTES: Final = 4 * 1024 * 1024
"""The most credit one credited circuit direction may hold: 4 MiB fills ~800 Mbit/s at a
40 ms relay path (window / RTT), well past the 200 Mbit/s the relay path aims for."""
RELAY_INITIAL_CREDIT_BYTES: Final = 256 * 1024
"""A credited circuit's first grant (the old per-circuit queue); it grows while it is used."""
RELAY_UNCREDITED_WINDOW_BYTES: Final = (
    RELAY_CIRCUIT_QUEUE_BYTES - MAX_MESSAGE_BYTES - RELAY_CIRCUIT_QUEUE_FRAMES * 512
)
"""The window a session may use on a circuit without credits (160 KiB): what always fits the
relay's 256 KiB drop-tail circuit queue, less one message past the window's edge and 512 bytes
of overhead per queued frame (as `sessiontypes.RELAY_WINDOW_BYTES`), so nothing is dropped."""
RELAY_CREDIT_SUBPROTOCOL: Final = "meshcore-credit.1"
"""The WebSocket subprotocol that turns per-circuit credits on (docs/wire-control.md)."""
RELAY_UDP_SUBPROTOCOL: Final = "meshcore-udp.1"
"""The subprotocol of a peer that takes its circuits' datagrams by UDP through the relay
(`CircuitUdp`), on a relay without credits (docs/wire-control.md)."""
RELAY_CREDIT_UDP_SUBPROTOCOL: Final = "meshcore-credit-udp.1"
"""Both at once: credits and UDP (a WebSocket upgrade agrees to one subprotocol)."""
RELAY_CLIENT_SUBPROTOCOLS: Final = (
    RELAY_CREDIT_UDP_SUBPROTOCOL,
    RELAY_CREDIT_SUBPROTOCOL,
    RELAY_UDP_SUBPROTOCOL,
)
"""What a peer offers in the upgrade, best first: a relay agrees to the first it speaks."""
RELAY_CREDITED_SUBPROTOCOLS: Final = (RELAY_CREDIT_UDP_SUBPROTOCOL, RELAY_CREDIT_SUBPROTOCOL)
"""The agreed subprotocols under which the relay grants credit."""
RELAY_UDP_TOKEN_BYTES: Final = 16
"""A circuit side's random token, the prefix of its datagrams to the relay's UDP port."""
RELAY_UDP_MAX_PACKET_BYTES: Final = 1500 - 20 - 8
"""The largest UDP payload the relay forwards by default (one unfragmented IPv4 datagram of
a 1500-byte path; larger ones are counted and dropped)."""
RELAY_UDP_CIRCUIT_PACKETS_PER_S: Final = 50_000.0
"""Datagrams per second one circuit side may send through the relay's UDP port."""
RELAY_UDP_CIRCUIT_BYTES_PER_S: Final = 50_000_000.0
"""Bytes per second one circuit side may send through it (400 Mbit/s)."""
RELAY_CONTROL_QUEUE_MESSAGES: Final = 256
"""Control messages queued towards one connection; a peer that lets more pile up is closed."""
RELAY_MAX_TRACKED_ADDRESSES: Final = 65536
"""Source addresses (IPv4, or IPv6 /64) with a connection-rate bucket; least recent evicted."""
RELAY_CLOSE_FLUSH_S: Final = 2.0
"""How long a connection being closed may take to flush its last messages (e.g. the Error)."""
RELAY_SHUTDOWN_GRACE_S: Final = 0.5
"""On shutdown, how long the relay waits for peers to answer their Close before cutting them
off (what was written still reaches them: the kernel sends it before the FIN). Every Close
is written at once, so this bounds the wait, not the writing (docs/relay.md, "Shutdown")."""

# --- layer-2 tunnel (meshcore.proto.switch, meshcore._tap, meshcore._tunnel; docs/tap.md) -
SWITCH_MAX_ENTRIES: Final = 4096
"""MAC addresses the tunnel's switch remembers; the least recently seen is forgotten first."""
SWITCH_AGEING_S: Final = 300.0
"""A learned MAC address is forgotten after this long without a frame from it (the Linux
bridge's default ageing time)."""
TAP_DEFAULT_MTU: Final = 1400
"""MTU of the TAP device unless configured (leaves room for outer headers on a 1500 path)."""
TAP_VNET_HEADER_BYTES: Final = 10
"""struct virtio_net_hdr (no num_buffers) before every frame, little-endian on every peer."""
TAP_GSO_MAX_BYTES: Final = 64000
"""The TAP's gso_max_size: a GSO segment, its virtio-net header, an Ethernet (and VLAN)
header and a chunk header fit one session message, so the common case is never split."""
TUNNEL_CHUNK_HEADER_BYTES: Final = 4
"""Before each chunk of a frame inside a session message: u32 with a more-follows bit."""
TUNNEL_MAX_RECORD_BYTES: Final = 256 * 1024
"""Largest frame (with its virtio-net header) the tunnel reassembles from chunks."""
TUNNEL_QUEUE_BYTES: Final = 4 * 1024 * 1024
"""Frames queued towards one peer's session; beyond it new frames are dropped (tail drop)."""
TUNNEL_READ_BATCH_FRAMES: Final = 256
"""Most frames read from the TAP per wakeup before the senders get a turn."""
LONE_PACKET_GAP_S: Final = 0.001
"""A packet read this long after the previous read of its descriptor is read alone, without
the failing read (EAGAIN, an exception in Python) that empties a descriptor (`readpace`)."""
TUNNEL_BACKOFF_MIN_S: Final = 0.5
"""First wait before a failed session or relay connection is tried again (doubles)."""
TUNNEL_BACKOFF_MAX_S: Final = 15.0
"""Longest wait between attempts to reach a peer or the relay."""

# --- direct paths (meshcore.proto.paths, meshcore._direct, meshcore._migrator; docs/direct.md)
DIRECT_STAGGER_S: Final = 0.005
"""Dials to successive candidates start this far apart: a good one never waits for a bad one."""
DIRECT_RETRY_JITTER: Final = 0.1
"""Direct retries come DIRECT_RETRY_S x (1 ± this) apart, so sessions do not retry in step."""
DIRECT_RETRY_MAX_S: Final = 16 * DIRECT_RETRY_S
"""Backoff cap: the retry interval doubles with each consecutive failure, up to this."""
DIRECT_STABLE_S: Final = 60.0
"""A direct path that lived this long before it died resets the backoff (anti-flap)."""
DIRECT_NOMINATE_MARGIN_S: Final = 0.5
"""The controlling side nominates no path this close to the race deadline, so that the other
side is still listening when the nomination arrives."""
DIRECT_ROUTE_TIMEOUT_S: Final = 5.0
"""An accepted direct connection or an unsolicited circuit must bring its first frame by then."""
DIRECT_LINK_QUEUE_FRAMES: Final = 4096
"""Frames queued for one path of a session; beyond it the path drops (the session retransmits)."""
RELAY_REOPEN_RETRY_S: Final = 1.0
"""A refused or failed circuit re-open is retried this often while the session needs the relay."""
RELAY_RECONNECT_MIN_S: Final = 0.5
"""First wait before a lost relay connection is dialled again; doubles per failed attempt."""
RELAY_RECONNECT_MAX_S: Final = 30.0
"""Longest wait between attempts to reconnect to the relay."""
RELAY_RECONNECT_JITTER: Final = 0.5
"""Reconnects wait the backoff x (1 ± this), so that the peers of a restarted relay spread out."""
RELAY_RECONNECT_WINDOW_MAX_S: Final = 120.0
"""The longest reconnect window a shutting-down relay may ask its peers to spread over
(docs/relay-client.md): 20,000 peers at 200 registrations/s, or one misconfigured relay."""
RELAY_RESTART_RATE_PER_S: Final = 1200.0
"""Registrations per second a shutting-down relay asks its peers to come back at: a little
more than one relay process takes on one core here (0.8-1 ms each), because asking too fast
costs only a short wait in the accept queue, while asking too slowly leaves the relay idle
in its window (docs/relay.md, "After a restart").
Peers beyond it wait in the listen backlog (max_pending_connections), not refused."""
RELAY_RESTART_MARGIN_S: Final = 10.0
"""A peer told a reconnect window that finds nothing listening at the relay's port (the new
relay is not up yet) within the window plus this retries at the shortest wait; past it the
backoff doubles again. Covers a relay's exit and start (~2-3 s measured, docs/relay.md)."""
RELAY_HEARTBEAT_S: Final = 5.0
"""A peer pings its relay after this long without receiving anything on the connection (and
again each time as long again passes), so that an idle connection still proves it lives."""
RELAY_DEAD_AFTER_S: Final = 15.0
"""A relay connection on which nothing arrived for this long is dead: two pings went unanswered
(a relay that vanished without a close or RST, docs/relay-client.md). Below the relay's own
RELAY_IDLE_TIMEOUT_S, which the peer's pings keep from running out."""

# --- sessions across several relays (docs/relay-network.md; Tailscale's DERP choice) --------
MAX_RELAY_CIRCUITS: Final = 4
"""Relay circuits one session keeps at once (one per relay); more from the peer are closed."""
RELAY_CIRCUITS: Final = 2
"""Relay circuits a relayed session keeps by default: the one carrying it and one spare on
another relay both peers reach, so that the session moves at once when its relay dies."""
RELAY_PROBE_S: Final = 3.0
"""While a session has several relay circuits, each gets a PATH_CHALLENGE this often: its RTT,
and a frame on it within the trust time (PATH_TRUST_S)."""
RELAY_SPARE_RETRY_S: Final = 30.0
"""A spare relay circuit that could not be opened is tried again after RELAY_REOPEN_RETRY_S,
doubling per failure up to this."""
RELAY_SWITCH_GAIN_S: Final = 0.010
"""Another relay circuit must be at least this much faster (RTT) to carry the session ..."""
RELAY_SWITCH_RATIO: Final = 2 / 3
"""... and below this fraction of the current circuit's RTT (Tailscale: 10 ms and 2/3)."""
