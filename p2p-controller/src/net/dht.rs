//! The DHT: `dht put` and `dht get` through Kademlia, matched to their
//! queries' progress events.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::Instant;

use libp2p::kad::{self, GetRecordOk, PutRecordOk, QueryId, Quorum, Record, RecordKey};

use super::event_loop::EventLoop;
use super::{GetResult, Reply};
use crate::api::DhtPut;

struct PendingGet {
    reply: Reply<GetResult>,
    started: Instant,
    network_only: bool,
}

struct PendingPut {
    reply: Reply<DhtPut>,
    started: Instant,
    key: String,
    quorum: usize,
}

/// Queries in flight on behalf of the control API.
#[derive(Default)]
pub(super) struct Dht {
    /// This node's identity: it signs the records it publishes.
    pub(super) signer: Option<libp2p::identity::Keypair>,
    gets: HashMap<QueryId, PendingGet>,
    puts: HashMap<QueryId, PendingPut>,
    /// Kademlia requests other nodes sent us.
    pub inbound_requests: u64,
}

impl Dht {
    /// Gets whose asker went away.
    pub fn forget_abandoned(&mut self) {
        self.gets.retain(|_, g| !g.reply.is_closed());
    }
}

impl EventLoop {
    pub(super) fn put(&mut self, key: String, value: Vec<u8>, quorum: Option<NonZeroUsize>, reply: Reply<DhtPut>) {
        let quorum = quorum.unwrap_or(self.cfg.quorum);
        let signed = match &self.dht.signer {
            Some(k) => crate::trust::record::sign(k, key.as_bytes(), &value),
            None => Err("no identity to sign with".into()),
        };
        let value = match signed {
            Ok(v) => v,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let mut record = Record::new(RecordKey::new(&key), value);
        record.publisher = Some(*self.swarm.local_peer_id());
        match self.kad().put_record(record, Quorum::N(quorum)) {
            Ok(id) => {
                self.dht.puts.insert(id, PendingPut { reply, started: Instant::now(), key, quorum: quorum.get() });
            }
            Err(e) => {
                let _ = reply.send(Err(format!("cannot store {key}: {e:?}")));
            }
        }
    }

    pub(super) fn get(&mut self, key: String, network_only: bool, reply: Reply<GetResult>) {
        let id = self.kad().get_record(RecordKey::new(&key));
        self.dht.gets.insert(id, PendingGet { reply, started: Instant::now(), network_only });
    }

    pub(super) fn on_get_progress(&mut self, id: QueryId, r: Result<GetRecordOk, kad::GetRecordError>) {
        let Some(pending) = self.dht.gets.get(&id) else { return };
        let elapsed = pending.started.elapsed();
        let outcome = match r {
            Ok(GetRecordOk::FoundRecord(pr)) if pending.network_only && pr.peer.is_none() => return,
            Ok(GetRecordOk::FoundRecord(pr)) => {
                let r = &pr.record;
                match crate::trust::record::open(r.key.as_ref(), &r.value, r.publisher.as_ref()) {
                    Ok(o) if o.publisher.is_none() && self.signed_records_required() => {
                        Err("the record found is not signed (this network requires signed records)".into())
                    }
                    Ok(o) => {
                        Ok(GetResult { value: Some(o.data.to_vec()), from: pr.peer, elapsed, publisher: o.publisher })
                    }
                    Err(e) => {
                        // Forged or altered on the way: evidence against who served it.
                        if let Some(p) = pr.peer {
                            self.reputation.report(
                                crate::reputation::Subject::Node(crate::identity::node_id_of(&p)),
                                crate::reputation::Evidence::BadRecord,
                                1,
                            );
                        }
                        Err(format!("the record found fails verification: {e}"))
                    }
                }
            }
            Ok(GetRecordOk::FinishedWithNoAdditionalRecord { .. }) | Err(kad::GetRecordError::NotFound { .. }) => {
                Ok(GetResult { value: None, from: None, elapsed, publisher: None })
            }
            Err(e) => Err(format!("Kademlia get: {e}")),
        };
        if let Some(p) = self.dht.gets.remove(&id) {
            let _ = p.reply.send(outcome);
        }
        if let Some(mut q) = self.kad().query_mut(&id) {
            q.finish();
        }
    }

    pub(super) fn on_put_done(&mut self, id: QueryId, r: Result<PutRecordOk, kad::PutRecordError>) {
        let Some(p) = self.dht.puts.remove(&id) else { return };
        let rtt_us = p.started.elapsed().as_micros() as u64;
        let out = match r {
            Ok(_) => Ok(DhtPut { key: p.key, stored: true, quorum: p.quorum, rtt_us }),
            Err(kad::PutRecordError::QuorumFailed { success, .. })
            | Err(kad::PutRecordError::Timeout { success, .. }) => Err(format!(
                "{}: stored here, but only {} peer(s) took a copy and the quorum is {} (are other nodes reachable? see `status`)",
                p.key,
                success.len(),
                p.quorum
            )),
        };
        let _ = p.reply.send(out);
    }
}
