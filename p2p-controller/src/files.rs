//! The `--peers` and `--records` file formats (exact, so other tools can
//! write them). Errors name the file, the field and the line.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use p2p_common::id::NodeId;
use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// `{"node_id": "<64 hex>", "addr": "<IPv4 or IPv6>", "port": <u16>}`,
/// optionally with `"link": {...}` ([`StaticLink`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    #[serde(deserialize_with = "node_id_hex", serialize_with = "node_id_ser")]
    pub node_id: NodeId,
    pub addr: IpAddr,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<StaticLink>,
}

/// Pre-shared link keys of a static peer (docs/WIRE.md version 2):
/// `{"key_id": <1-255>, "rx": "<32 hex>", "tx": "<32 hex>"}`. `rx` verifies
/// the peer's packets (its `tx`), `tx` tags the packets sent to it (its
/// `rx`); both sides use the same key ID. Fixed keys: no rotation and no
/// forward secrecy, for links configured by hand (and the benchmark);
/// peers that join through libp2p agree fresh keys instead.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticLink {
    pub key_id: u8,
    #[serde(deserialize_with = "key_hex", serialize_with = "key_ser")]
    pub rx: [u8; 16],
    #[serde(deserialize_with = "key_hex", serialize_with = "key_ser")]
    pub tx: [u8; 16],
}

fn key_hex<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<[u8; 16], D::Error> {
    let s = String::deserialize(d)?;
    let mut k = [0u8; 16];
    hex::decode_to_slice(&s, &mut k)
        .map_err(|_| serde::de::Error::custom(format!("link key {s:?}: expected 32 hex digits (16 bytes)")))?;
    Ok(k)
}

fn key_ser<S: serde::Serializer>(k: &[u8; 16], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(k))
}

/// `{"key": "<string>", "value": "<string>"}`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSpec {
    pub key: String,
    pub value: String,
}

fn node_id_hex<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<NodeId, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|e| serde::de::Error::custom(format!("node_id: {e}")))
}

fn node_id_ser<S: serde::Serializer>(id: &NodeId, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_string())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::File { path: path.into(), reason: format!("cannot read: {e}") })
}

/// serde_json reports "… at line L column C"; keep it, it names the spot.
fn parse_err(path: &Path, what: &str, e: serde_json::Error) -> Error {
    Error::File { path: path.into(), reason: format!("malformed {what} file: {e} (expected {})", expected(what)) }
}

fn expected(what: &str) -> &'static str {
    if what == "peers" {
        r#"a JSON array of {"node_id": "<64 hex>", "addr": "<IPv4 or IPv6>", "port": <0-65535>}, each optionally with "link": {"key_id": <1-255>, "rx": "<32 hex>", "tx": "<32 hex>"}"#
    } else {
        r#"a JSON array of {"key": "<string>", "value": "<string>"}"#
    }
}

pub fn parse_peers(path: &Path, text: &str, self_id: Option<&NodeId>) -> Result<Vec<PeerSpec>> {
    let peers: Vec<PeerSpec> = serde_json::from_str(text).map_err(|e| parse_err(path, "peers", e))?;
    let lines = element_lines(text);
    let mut seen = HashSet::new();
    for (i, p) in peers.iter().enumerate() {
        let line = lines.get(i).copied().unwrap_or(0);
        let bad = |reason: String| Error::File {
            path: path.into(),
            reason: format!("entry {} (line {line}): {reason}", i + 1),
        };
        if !seen.insert(p.node_id) {
            return Err(bad(format!("node_id {} appears twice", p.node_id)));
        }
        if Some(&p.node_id) == self_id {
            return Err(bad("node_id is this node's own ID".into()));
        }
        if p.port == 0 {
            return Err(bad("port: 0 is not a valid overlay port".into()));
        }
        if p.addr.is_unspecified() || p.addr.is_multicast() {
            return Err(bad(format!("addr: {} is not a unicast address", p.addr)));
        }
        if let Some(l) = &p.link {
            if l.key_id == 0 {
                return Err(bad("link.key_id: 0 means \"no key\" on the wire; use 1-255".into()));
            }
            if l.rx == [0; 16] || l.tx == [0; 16] {
                return Err(bad("link: an all-zero key is no secret".into()));
            }
        }
    }
    Ok(peers)
}

pub fn load_peers(path: &Path, self_id: Option<&NodeId>) -> Result<Vec<PeerSpec>> {
    parse_peers(path, &read(path)?, self_id)
}

pub fn parse_records(path: &Path, text: &str) -> Result<Vec<RecordSpec>> {
    serde_json::from_str(text).map_err(|e| parse_err(path, "records", e))
}

pub fn load_records(path: &Path) -> Result<Vec<RecordSpec>> {
    parse_records(path, &read(path)?)
}

/// Line (1-based) on which each element of a top-level JSON array starts.
fn element_lines(text: &str) -> Vec<usize> {
    let (mut depth, mut line, mut in_str, mut esc) = (0i32, 1usize, false, false);
    let mut out = Vec::new();
    let mut expecting = false;
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        if depth == 1 && expecting && !c.is_whitespace() && c != ']' {
            out.push(line);
            expecting = false;
        }
        match c {
            '"' => in_str = true,
            '[' | '{' => {
                depth += 1;
                if depth == 1 {
                    expecting = true;
                }
            }
            ']' | '}' => depth -= 1,
            ',' if depth == 1 => expecting = true,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID_A: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const ID_B: &str = "0202020202020202020202020202020202020202020202020202020202020202";

    fn p(text: &str) -> Result<Vec<PeerSpec>> {
        parse_peers(Path::new("peers.json"), text, None)
    }

    #[test]
    fn parses_the_documented_format() {
        let text = format!(
            r#"[{{"node_id": "{ID_A}", "addr": "10.0.0.1", "port": 9470}},
               {{"node_id": "{ID_B}", "addr": "fd00::2", "port": 1}}]"#
        );
        let peers = p(&text).unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].node_id.to_string(), ID_A);
        assert_eq!(peers[1].addr, "fd00::2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn errors_name_line_and_field() {
        let text = format!(
            "[\n {{\"node_id\": \"{ID_A}\", \"addr\": \"10.0.0.1\", \"port\": 9470}},\n {{\"node_id\": \"xyz\", \"addr\": \"10.0.0.2\", \"port\": 9470}}\n]"
        );
        let e = p(&text).unwrap_err().to_string();
        assert!(e.contains("node_id") && e.contains("line 3"), "{e}");
        let e = p(&format!(r#"[{{"node_id": "{ID_A}", "addr": "10.0.0.300", "port": 1}}]"#)).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("IP address"), "{e}");
        let e = p(&format!(r#"[{{"node_id": "{ID_A}", "addr": "10.0.0.3", "port": 70000}}]"#)).unwrap_err().to_string();
        assert!(e.contains("70000"), "{e}");
        let e = p(&format!(r#"[{{"node_id": "{ID_A}", "addr": "10.0.0.3"}}]"#)).unwrap_err().to_string();
        assert!(e.contains("missing field `port`"), "{e}");
        let e =
            p(&format!(r#"[{{"node_id": "{ID_A}", "addr": "10.0.0.3", "port": 1, "x": 2}}]"#)).unwrap_err().to_string();
        assert!(e.contains("unknown field `x`"), "{e}");
        let dup = format!(
            "[\n{{\"node_id\": \"{ID_A}\", \"addr\": \"10.0.0.1\", \"port\": 1}},\n{{\"node_id\": \"{ID_A}\", \"addr\": \"10.0.0.2\", \"port\": 1}}]"
        );
        let e = p(&dup).unwrap_err().to_string();
        assert!(e.contains("entry 2 (line 3)") && e.contains("twice"), "{e}");
        assert!(p("{}").is_err());
    }

    #[test]
    fn static_link_keys() {
        let (rx, tx) = ("00112233445566778899aabbccddeeff", "ffeeddccbbaa99887766554433221100");
        let ok = format!(
            r#"[{{"node_id": "{ID_A}", "addr": "10.0.0.1", "port": 1, "link": {{"key_id": 7, "rx": "{rx}", "tx": "{tx}"}}}}]"#
        );
        let l = p(&ok).unwrap()[0].link.clone().unwrap();
        assert_eq!((l.key_id, l.rx[0], l.rx[15], l.tx[0]), (7, 0x00, 0xff, 0xff));
        let back = serde_json::to_string(&p(&ok).unwrap()).unwrap();
        assert_eq!(p(&back).unwrap(), p(&ok).unwrap(), "round trip: {back}");
        let e = p(&ok.replace("\"key_id\": 7", "\"key_id\": 0")).unwrap_err().to_string();
        assert!(e.contains("link.key_id") && e.contains("1-255"), "{e}");
        let e = p(&ok.replace(rx, "0011")).unwrap_err().to_string();
        assert!(e.contains("32 hex digits"), "{e}");
        let e = p(&ok.replace(tx, &"0".repeat(32))).unwrap_err().to_string();
        assert!(e.contains("all-zero"), "{e}");
        let e = p(&ok.replace("\"tx\"", "\"txx\"")).unwrap_err().to_string();
        assert!(e.contains("unknown field `txx`"), "{e}");
    }

    #[test]
    fn records_format() {
        let r = parse_records(Path::new("r.json"), r#"[{"key": "k", "value": "v"}]"#).unwrap();
        assert_eq!(r, vec![RecordSpec { key: "k".into(), value: "v".into() }]);
        assert!(parse_records(Path::new("r.json"), r#"[{"key": 1, "value": "v"}]"#).is_err());
    }
}
