//! The overlay wire format of docs/WIRE.md, versions 1 and 2 (2: the
//! reserved bytes carry the hop-by-hop tag's key ID, stream and sequence
//! number, see [`crate::auth`]). All multi-byte fields are
//! stored as big-endian byte arrays so that the structs have alignment 1 and
//! can be read straight out of a packet.

use core::mem::size_of;

pub const MAGIC: [u8; 2] = [0x50, 0x4E];
/// The version of an untagged packet (v1 layout, reserved bytes zero).
pub const VERSION: u8 = 1;
/// The version of a packet with a hop-by-hop tag (docs/WIRE.md v2).
pub const VERSION_AUTH: u8 = 2;
pub const HEADER_LEN: usize = 96;
pub const DEFAULT_OVERLAY_PORT: u16 = 9470;
pub const DEFAULT_TTL: u8 = 32;

pub const KIND_LOOKUP: u8 = 1;
pub const KIND_LOOKUP_REPLY: u8 = 2;
pub const KIND_DATA: u8 = 3;
pub const KIND_PING: u8 = 4;
pub const KIND_PONG: u8 = 5;

/// `flags` bit 0: `tag` is set and must verify.
pub const FLAG_AUTH: u8 = 1;
/// `flags` bit 1, LOOKUP_REPLY only: the payload ends with the owner's
/// signature (docs/WIRE.md "Signed LOOKUP_REPLY").
pub const FLAG_SIGNED: u8 = 2;

pub const CLASS_BEST_EFFORT: u8 = 0;
pub const CLASS_INTERACTIVE: u8 = 1;
pub const CLASS_BULK: u8 = 2;

pub const STATUS_FOUND: u8 = 0;
pub const STATUS_NOT_FOUND: u8 = 1;
pub const STATUS_REFUSED: u8 = 2;

pub const LOOKUP_PAYLOAD_LEN: usize = 20;
pub const LOOKUP_REPLY_PAYLOAD_LEN: usize = 24;
pub const PING_PAYLOAD_LEN: usize = 8;

pub type NodeIdBytes = [u8; 32];

/// The fixed 96-byte overlay header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverlayHeader {
    pub magic: [u8; 2],
    pub version: u8,
    pub kind: u8,
    pub flags: u8,
    pub ttl: u8,
    pub hops: u8,
    pub class: u8,
    pub msg_id: [u8; 8],
    pub src_id: NodeIdBytes,
    pub dst_key: NodeIdBytes,
    pub payload_len: [u8; 2],
    pub reserved: [u8; 6],
    pub tag: [u8; 8],
}
const _: () = assert!(size_of::<OverlayHeader>() == HEADER_LEN);

/// Byte offsets of the header fields (for fixtures and tools).
pub mod offset {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 2;
    pub const KIND: usize = 3;
    pub const FLAGS: usize = 4;
    pub const TTL: usize = 5;
    pub const HOPS: usize = 6;
    pub const CLASS: usize = 7;
    pub const MSG_ID: usize = 8;
    pub const SRC_ID: usize = 16;
    pub const DST_KEY: usize = 48;
    pub const PAYLOAD_LEN: usize = 80;
    pub const RESERVED: usize = 82;
    /// Version 2: the link key the tag was made with (0: none).
    pub const KEY_ID: usize = 82;
    /// Version 2: the sender's sequence stream (a CPU, or the controller).
    pub const STREAM: usize = 83;
    /// Version 2: the stream's sequence number (u32, big-endian).
    pub const SEQ: usize = 84;
    pub const TAG: usize = 88;
}

impl OverlayHeader {
    pub fn payload_len(&self) -> u16 {
        u16::from_be_bytes(self.payload_len)
    }
    pub fn msg_id(&self) -> u64 {
        u64::from_be_bytes(self.msg_id)
    }
}

/// True for the versions this node reads.
#[inline(always)]
pub fn version_known(version: u8) -> bool {
    version == VERSION || version == VERSION_AUTH
}

/// True for the kinds version 1 knows.
#[inline(always)]
pub fn kind_known(kind: u8) -> bool {
    (KIND_LOOKUP..=KIND_PONG).contains(&kind)
}

/// LOOKUP payload head; the record key bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookupPayload {
    /// IPv6, or IPv4-mapped `::ffff:a.b.c.d`.
    pub reply_addr: [u8; 16],
    pub reply_port: [u8; 2],
    /// Zero bytes at the end of the payload, after the record key (an
    /// unauthenticated LOOKUP pads itself to the size of the reply it
    /// wants: docs/WIRE.md "No amplification"). Zero in version 1.
    pub pad_len: [u8; 2],
}
const _: () = assert!(size_of::<LookupPayload>() == LOOKUP_PAYLOAD_LEN);

/// LOOKUP_REPLY payload head; the record value follows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookupReplyPayload {
    pub status: u8,
    pub zero: [u8; 3],
    pub owner_port: [u8; 2],
    pub zero2: [u8; 2],
    pub owner_addr: [u8; 16],
}
const _: () = assert!(size_of::<LookupReplyPayload>() == LOOKUP_REPLY_PAYLOAD_LEN);

/// Is `id` the IPv4-mapped form `::ffff:a.b.c.d`?
#[inline(always)]
pub fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}
