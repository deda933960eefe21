//! Hop-by-hop authentication, docs/WIRE.md version 2: the SipHash-2-4 tag
//! two neighbours compute with their link key, the v2 fields in the
//! header's formerly reserved bytes, and the replay window. Shared by the
//! XDP program and userspace (both datapaths and the controller's own
//! sends), so the two compute the same tag by construction; the unit tests
//! check it against an independent SipHash implementation.

use crate::wire::{HEADER_LEN, KIND_LOOKUP, LOOKUP_PAYLOAD_LEN, offset};

/// Link keys are 128-bit SipHash keys.
pub const LINK_KEY_LEN: usize = 16;
/// Bytes of the header the tag covers: all but the tag itself.
pub const TAGGED_HEADER_LEN: usize = offset::TAG;
/// The message the tag is computed over, in 64-bit words: the header
/// before the tag (11 words) and, for LOOKUP, the reply address and port
/// (the 20-byte payload head, zero-padded to 24 bytes: 3 words).
pub const TAG_WORDS: usize = TAGGED_HEADER_LEN / 8;
pub const TAG_WORDS_LOOKUP: usize = TAG_WORDS + 3;
/// The stream of packets the controller sends (the XDP program's streams
/// are CPU numbers below this).
pub const STREAM_CONTROLLER: u8 = 0xff;
/// Streams the XDP program uses: CPU number modulo this.
pub const KERNEL_STREAMS: u32 = 0xfe;

/// Replay window: `REPLAY_BLOCKS` words of 32 sequence numbers each, word
/// `(seq / 32) % REPLAY_BLOCKS` holding the block number (high 32 bits)
/// and a bitmap of the block's numbers seen (low 32 bits).
pub const REPLAY_BLOCKS: usize = 64;
/// A packet at most this many sequence numbers behind the newest one seen
/// is accepted once; older ones are dropped. (A slot is reused only by a
/// block `REPLAY_BLOCKS` newer.)
pub const REPLAY_WINDOW: u32 = (REPLAY_BLOCKS as u32 - 1) * 32 + 1;
const _: () = assert!(REPLAY_WINDOW >= 1024, "docs/WIRE.md promises a window of at least 1024");

#[inline(always)]
fn rotl(x: u64, b: u32) -> u64 {
    x.rotate_left(b)
}

#[inline(always)]
fn sipround(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = rotl(v[1], 13);
    v[1] ^= v[0];
    v[0] = rotl(v[0], 32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = rotl(v[3], 16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = rotl(v[3], 21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = rotl(v[1], 17);
    v[1] ^= v[2];
    v[2] = rotl(v[2], 32);
}

/// The key as SipHash's two little-endian words.
#[inline(always)]
pub fn key_words(key: &[u8; LINK_KEY_LEN]) -> (u64, u64) {
    let k0 = u64::from_le_bytes([key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7]]);
    let k1 = u64::from_le_bytes([key[8], key[9], key[10], key[11], key[12], key[13], key[14], key[15]]);
    (k0, k1)
}

/// SipHash-2-4 of the `8 * N`-byte message whose `i`-th little-endian
/// 64-bit word is `word(i)` (messages here are whole words, so the last
/// block is the length alone).
#[inline(always)]
pub fn siphash24<const N: usize>(k0: u64, k1: u64, word: impl Fn(usize) -> u64) -> u64 {
    let mut v = [k0 ^ 0x736f6d6570736575, k1 ^ 0x646f72616e646f6d, k0 ^ 0x6c7967656e657261, k1 ^ 0x7465646279746573];
    let mut i = 0;
    while i < N {
        let m = word(i);
        v[3] ^= m;
        sipround(&mut v);
        sipround(&mut v);
        v[0] ^= m;
        i += 1;
    }
    let b = ((8 * N) as u64 & 0xff) << 56;
    v[3] ^= b;
    sipround(&mut v);
    sipround(&mut v);
    v[0] ^= b;
    v[2] ^= 0xff;
    sipround(&mut v);
    sipround(&mut v);
    sipround(&mut v);
    sipround(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The little-endian word at byte `at` of `b` (which must hold it).
#[inline(always)]
fn le_word(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The tag of overlay packet `pkt` (header and payload, at least as long as
/// its kind needs: callers validate first) under `key`: SipHash-2-4 of the
/// header's first 88 bytes, followed for LOOKUP by the 20-byte payload head
/// and four zero bytes. `None` if `pkt` is too short for that.
pub fn tag_of(key: &[u8; LINK_KEY_LEN], pkt: &[u8]) -> Option<u64> {
    let (k0, k1) = key_words(key);
    if pkt.len() < HEADER_LEN {
        return None;
    }
    if pkt[offset::KIND] != KIND_LOOKUP {
        return Some(siphash24::<TAG_WORDS>(k0, k1, |i| le_word(pkt, 8 * i)));
    }
    if pkt.len() < HEADER_LEN + LOOKUP_PAYLOAD_LEN {
        return None;
    }
    let mut head = [0u8; 24];
    head[..LOOKUP_PAYLOAD_LEN].copy_from_slice(&pkt[HEADER_LEN..HEADER_LEN + LOOKUP_PAYLOAD_LEN]);
    Some(siphash24::<TAG_WORDS_LOOKUP>(k0, k1, |i| {
        if i < TAG_WORDS { le_word(pkt, 8 * i) } else { le_word(&head, 8 * (i - TAG_WORDS)) }
    }))
}

/// The v2 fields of a packet: (key ID, stream, sequence number).
pub fn v2_fields(pkt: &[u8]) -> (u8, u8, u32) {
    let s = offset::SEQ;
    (pkt[offset::KEY_ID], pkt[offset::STREAM], u32::from_be_bytes([pkt[s], pkt[s + 1], pkt[s + 2], pkt[s + 3]]))
}

/// Makes `pkt` a version-2 packet tagged for the next link: AUTH set, the
/// key ID, stream and sequence number written, then the tag.
pub fn seal(pkt: &mut [u8], key: &[u8; LINK_KEY_LEN], key_id: u8, stream: u8, seq: u32) -> bool {
    if pkt.len() < HEADER_LEN {
        return false;
    }
    pkt[offset::VERSION] = crate::wire::VERSION_AUTH;
    pkt[offset::FLAGS] |= crate::wire::FLAG_AUTH;
    pkt[offset::KEY_ID] = key_id;
    pkt[offset::STREAM] = stream;
    pkt[offset::SEQ..offset::SEQ + 4].copy_from_slice(&seq.to_be_bytes());
    match tag_of(key, pkt) {
        Some(t) => {
            pkt[offset::TAG..offset::TAG + 8].copy_from_slice(&t.to_be_bytes());
            true
        }
        None => {
            strip(pkt);
            false
        }
    }
}

/// Makes `pkt` an untagged version-1 packet (for a link without keys).
pub fn strip(pkt: &mut [u8]) {
    if pkt.len() < HEADER_LEN {
        return;
    }
    pkt[offset::VERSION] = crate::wire::VERSION;
    pkt[offset::FLAGS] &= !crate::wire::FLAG_AUTH;
    pkt[offset::RESERVED..offset::TAG + 8].fill(0);
}

/// Whether a packet claims a tag (version 2 with AUTH set).
#[inline(always)]
pub fn tagged(version: u8, flags: u8) -> bool {
    version == crate::wire::VERSION_AUTH && flags & crate::wire::FLAG_AUTH != 0
}

/// The replay window's slot for `seq`.
#[inline(always)]
pub fn replay_slot(seq: u32) -> usize {
    ((seq >> 5) as usize) & (REPLAY_BLOCKS - 1)
}

/// The replay decision for `seq` given the word in its slot: the word to
/// store if the packet is fresh, `None` if it was seen or is too old.
#[inline(always)]
pub fn replay_check(word: u64, seq: u32) -> Option<u64> {
    let block = (seq >> 5) as u64;
    let bit = 1u64 << (seq & 31);
    let have = word >> 32;
    if have > block {
        None
    } else if have == block {
        if word & bit != 0 { None } else { Some(word | bit) }
    } else {
        Some((block << 32) | bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::hash::Hasher;

    /// The reference implementation's test vectors: key 00..0f, messages
    /// 00, 00 01, ... (here whole words only: lengths 0, 8, 16, ...).
    #[test]
    fn matches_an_independent_siphash() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let msg: [u8; 112] = core::array::from_fn(|i| i as u8);
        let (k0, k1) = key_words(&key);
        let ours = siphash24::<0>(k0, k1, |_| 0);
        assert_eq!(ours, 0x726fdb47dd0e0e31, "the paper's vector for the empty message");
        macro_rules! check {
            ($n:expr) => {{
                let mut h = siphasher::sip::SipHasher24::new_with_keys(k0, k1);
                h.write(&msg[..8 * $n]);
                assert_eq!(siphash24::<$n>(k0, k1, |i| le_word(&msg, 8 * i)), h.finish(), "{} words", $n);
            }};
        }
        check!(1);
        check!(11);
        check!(14);
    }

    #[test]
    fn tag_covers_header_and_lookup_reply_address() {
        let key = [7u8; 16];
        let mut pkt = vec![0u8; HEADER_LEN + 30];
        pkt[offset::KIND] = KIND_LOOKUP;
        let t = tag_of(&key, &pkt).unwrap();
        for at in [0, offset::TTL, offset::SRC_ID + 5, offset::SEQ + 3, HEADER_LEN, HEADER_LEN + 17] {
            let mut p = pkt.clone();
            p[at] ^= 1;
            assert_ne!(tag_of(&key, &p), Some(t), "byte {at} is covered");
        }
        for at in [offset::TAG, HEADER_LEN + 20, HEADER_LEN + 29] {
            let mut p = pkt.clone();
            p[at] ^= 1;
            assert_eq!(tag_of(&key, &p), Some(t), "byte {at} is not covered");
        }
        assert_eq!(tag_of(&key, &pkt[..HEADER_LEN + 19]), None);
        assert_ne!(tag_of(&[8u8; 16], &pkt), Some(t));
    }

    #[test]
    fn seal_and_strip() {
        let key = [3u8; 16];
        let mut pkt = vec![0u8; HEADER_LEN];
        pkt[offset::KIND] = 3;
        pkt[offset::VERSION] = 1;
        assert!(seal(&mut pkt, &key, 9, 1, 0x01020304));
        assert!(tagged(pkt[offset::VERSION], pkt[offset::FLAGS]));
        assert_eq!(v2_fields(&pkt), (9, 1, 0x01020304));
        let tag = u64::from_be_bytes(pkt[offset::TAG..offset::TAG + 8].try_into().unwrap());
        assert_eq!(tag_of(&key, &pkt), Some(tag));
        strip(&mut pkt);
        assert!(!tagged(pkt[offset::VERSION], pkt[offset::FLAGS]));
        assert!(pkt[offset::RESERVED..].iter().all(|b| *b == 0));
    }

    /// Feeds `seqs` through one window; which were accepted.
    fn run(seqs: &[u32]) -> Vec<bool> {
        let mut w = [0u64; REPLAY_BLOCKS];
        seqs.iter()
            .map(|s| match replay_check(w[replay_slot(*s)], *s) {
                Some(n) => {
                    w[replay_slot(*s)] = n;
                    true
                }
                None => false,
            })
            .collect()
    }

    #[test]
    fn replay_window_edges() {
        assert_eq!(run(&[0, 1, 0, 1, 2]), [true, true, false, false, true]);
        // Out of order within the window: each accepted once.
        assert_eq!(run(&[100, 50, 99, 50, 100]), [true, true, true, false, false]);
        // The newest is N: N - REPLAY_WINDOW + 1 .. N are inside, all fresh.
        let n = 10_000u32;
        let oldest_inside = n - (REPLAY_WINDOW - 1);
        assert_eq!(run(&[n, oldest_inside, oldest_inside]), [true, true, false]);
        // Far behind the newest: dropped (its slot holds a newer block).
        assert_eq!(run(&[n, n - 32 * REPLAY_BLOCKS as u32]), [true, false]);
        // A jump ahead forgets nothing it must remember.
        assert_eq!(run(&[5, 5 + 32 * 64 * 10, 5]), [true, true, false]);
    }
}
