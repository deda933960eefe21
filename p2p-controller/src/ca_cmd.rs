//! `p2p-controller ca …`: the certificate authority's commands and what
//! they print (human text, or one JSON object with `--json`).

use std::str::FromStr;

use libp2p::identity::PeerId;
use serde_json::{Value, json};

use crate::cli::CaCommand;
use crate::error::{Error, Result};
use crate::identity::node_id_of;
use crate::paths::{CA_ISSUED, CA_REVOCATIONS, CA_ROOT_KEY, CA_ROOT_PUB};
use crate::trust::ca::{self, Ca};
use crate::trust::{Armored, Certificate, Revocations, RootKey};

pub fn run(cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Init { out, json } => {
            let anchor = ca::init(&out)?;
            let v = json!({
                "dir": out,
                "fingerprint": anchor.fingerprint(),
                "root_key": out.join(CA_ROOT_KEY),
                "root_pub": out.join(CA_ROOT_PUB),
                "issued": out.join(CA_ISSUED),
                "revocations": out.join(CA_REVOCATIONS),
            });
            if json {
                println!("{v}");
            } else {
                println!("network root {} created in {}", anchor.fingerprint(), out.display());
                println!(
                    "  {CA_ROOT_KEY}     private key (mode 0600): back it up; keep it offline or on the one --ca-key node"
                );
                println!("  {CA_ROOT_PUB}     the trust anchor: give it to every node");
                println!("  {CA_ISSUED} what this CA signed; {CA_REVOCATIONS}: its signed revocation list");
                println!("next: p2p-controller ca sign PEER_ID --ca {} --out node.cert", out.display());
            }
            Ok(())
        }
        CaCommand::Sign { peer_id, valid, class, ca: dir, out, json } => {
            // Every input is checked before the CA is touched.
            let peer = PeerId::from_str(peer_id.trim()).map_err(|e| {
                Error::Usage(format!("{peer_id:?} is not a peer ID ({e}); `p2p-controller id` prints a node's"))
            })?;
            let valid =
                crate::units::parse_duration(&valid).map_err(|e| Error::Usage(format!("--valid {e}")))?.ok_or_else(
                    || Error::Usage("--valid: a certificate must expire; give a duration such as 30d".into()),
                )?;
            if !crate::trust::cert::valid_class(&class) {
                return Err(Error::Usage(format!(
                    "--class {class:?}: 1 to 32 of a-z, 0-9, - and _, starting with a letter or digit"
                )));
            }
            let ca = Ca::open(&dir.dir)?;
            let cert = ca.sign(peer, &class, valid)?;
            let armor = cert.to_armor();
            if let Some(out) = &out {
                ca::write_atomic(out, armor.as_bytes(), 0o644)?;
            }
            if json {
                let mut v = cert_json(&cert);
                v["file"] = json!(out);
                v["certificate"] = json!(armor);
                println!("{v}");
            } else if let Some(out) = &out {
                println!(
                    "certificate {} for {} (class {}) valid until {} written to {}",
                    cert.serial,
                    cert.peer,
                    cert.class,
                    when(cert.not_after),
                    out.display()
                );
            } else {
                print!("{armor}");
            }
            Ok(())
        }
        CaCommand::Show { file, anchor, revocations, json } => {
            let anchor = anchor.as_deref().map(ca::read_root_key).transpose()?;
            let crl = revocations.as_deref().map(ca::read_revocations).transpose()?;
            if let (Some(a), Some(r), Some(path)) = (&anchor, &crl, &revocations)
                && r.issuer != a.0
            {
                return Err(Error::Usage(format!(
                    "{}: signed by root {}, not by the anchor {}",
                    path.display(),
                    RootKey(r.issuer).fingerprint(),
                    a.fingerprint()
                )));
            }
            let item = ca::read_armored(&file)?;
            let mut v = match &item {
                Armored::Root(k) => {
                    json!({"kind": "root_key", "fingerprint": k.fingerprint(), "key": hex::encode(k.0)})
                }
                Armored::Certificate(c) => cert_json(c),
                Armored::Revocations(r) => crl_json(r),
            };
            let verdict = match (&item, &anchor) {
                (Armored::Certificate(c), Some(a)) => Some(c.verify(a, ca::unix_now(), crl.as_ref())),
                (Armored::Revocations(r), Some(a)) if r.issuer != a.0 => {
                    return Err(Error::Usage(format!(
                        "{}: signed by root {}, not by the anchor {}",
                        file.display(),
                        RootKey(r.issuer).fingerprint(),
                        a.fingerprint()
                    )));
                }
                _ => None,
            };
            if let Some(verdict) = &verdict {
                v["accepted"] = json!(verdict.is_ok());
                v["refused_because"] = json!(verdict.as_ref().err().map(ToString::to_string));
            }
            if json {
                println!("{v}");
            } else {
                print_human(&item, verdict.as_ref());
            }
            match verdict {
                Some(Err(e)) => Err(Error::Usage(format!("{}: a node would refuse it: {e}", file.display()))),
                _ => Ok(()),
            }
        }
        CaCommand::Revoke { serial, ca: dir, json } => {
            let ca = Ca::open(&dir.dir)?;
            let (crl, who, already) = ca.revoke(serial)?;
            if json {
                let mut v = crl_json(&crl);
                v["serial"] = json!(serial);
                v["peer_id"] = json!(who.peer_id);
                v["already_revoked"] = json!(already);
                v["file"] = json!(ca.revocations_path());
                println!("{v}");
            } else if already {
                println!("serial {serial} ({}) was already revoked; nothing changed", who.peer_id);
            } else {
                println!(
                    "revoked serial {serial} and every other unexpired one of {} (class {}); {} now lists {} serial(s), sequence {}",
                    who.peer_id,
                    who.class,
                    ca.revocations_path().display(),
                    crl.entries.len(),
                    crl.sequence
                );
            }
            Ok(())
        }
    }
}

/// Unix seconds as an operator reads them (UTC, RFC 3339).
fn when(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.min(253_402_300_799));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn cert_json(c: &Certificate) -> Value {
    let now = ca::unix_now();
    let state = if now < c.not_before {
        "not yet valid"
    } else if now >= c.not_after {
        "expired"
    } else {
        "valid"
    };
    json!({
        "kind": "certificate",
        "version": crate::trust::cert::VERSION,
        "serial": c.serial,
        "peer_id": c.peer.to_string(),
        "node_id": node_id_of(&c.peer).to_string(),
        "class": c.class,
        "not_before": c.not_before,
        "not_after": c.not_after,
        "issuer": RootKey(c.issuer).fingerprint(),
        "state": state,
    })
}

fn crl_json(r: &Revocations) -> Value {
    json!({
        "kind": "revocations",
        "version": crate::trust::cert::VERSION,
        "sequence": r.sequence,
        "issued_at": r.issued_at,
        "issuer": RootKey(r.issuer).fingerprint(),
        "revoked": r.entries.iter().map(|(s, at)| json!({"serial": s, "at": at})).collect::<Vec<_>>(),
    })
}

fn print_human(item: &Armored, verdict: Option<&std::result::Result<(), crate::trust::TrustError>>) {
    match item {
        Armored::Root(k) => println!("root key {} (ed25519 {})", k.fingerprint(), hex::encode(k.0)),
        Armored::Certificate(c) => {
            let v = cert_json(c);
            println!("certificate serial {} (encoding v{})", c.serial, crate::trust::cert::VERSION);
            println!("  peer     {}", c.peer);
            println!("  node id  {}", node_id_of(&c.peer));
            println!("  class    {}", c.class);
            println!(
                "  valid    {} .. {} ({})",
                when(c.not_before),
                when(c.not_after),
                v["state"].as_str().unwrap_or("")
            );
            println!("  issuer   root {} (signature checked)", RootKey(c.issuer).fingerprint());
        }
        Armored::Revocations(r) => {
            println!(
                "revocation list sequence {} of root {}, issued {}: {} serial(s)",
                r.sequence,
                RootKey(r.issuer).fingerprint(),
                when(r.issued_at),
                r.entries.len()
            );
            for (s, at) in &r.entries {
                println!("  serial {s} revoked {}", when(*at));
            }
        }
    }
    match verdict {
        Some(Ok(())) => println!("  verdict  accepted under the anchor"),
        Some(Err(e)) => println!("  verdict  refused: {e}"),
        None => {}
    }
}
