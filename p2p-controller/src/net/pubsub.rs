//! Pub/sub: gossipsub topics, local subscribers with bounded queues, and
//! messages published here delivered to local subscribers too.

use std::collections::{BTreeMap, HashMap};

use libp2p::gossipsub::{self, IdentTopic};
use tokio::sync::mpsc;

use super::Reply;
use super::event_loop::EventLoop;
use crate::api::{Published, PubsubMessage, PubsubStatus};

/// Local subscribers per topic.
#[derive(Default)]
pub(super) struct Pubsub {
    subs: HashMap<String, Vec<mpsc::Sender<PubsubMessage>>>,
    /// Messages dropped for subscribers that did not keep up.
    dropped: u64,
}

impl EventLoop {
    pub(super) fn on_gossipsub(&mut self, e: gossipsub::Event) {
        if let gossipsub::Event::Message { message_id, message, propagation_source } = e {
            // Anchored network: gossipsub validates every message, and
            // one relayed by a non-member is rejected (not delivered, not
            // forwarded, counted against it by gossipsub's score).
            if self.membership_required() {
                let ok = self.trusted(&propagation_source);
                let verdict =
                    if ok { gossipsub::MessageAcceptance::Accept } else { gossipsub::MessageAcceptance::Reject };
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    verdict,
                );
                if !ok {
                    return;
                }
            }
            let msg = PubsubMessage {
                topic: message.topic.to_string(),
                from: message.source.map(|p| p.to_string()),
                message_id: message_id.to_string(),
                data: String::from_utf8_lossy(&message.data).into_owned(),
            };
            self.deliver_local(msg);
        }
    }

    fn deliver_local(&mut self, msg: PubsubMessage) -> usize {
        let Some(list) = self.pubsub.subs.get_mut(&msg.topic) else { return 0 };
        let mut dropped = 0;
        list.retain(|tx| match tx.try_send(msg.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                dropped += 1;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if dropped > 0 {
            self.pubsub.dropped += dropped;
            log::warn!("pub/sub: {dropped} subscriber(s) of {} fell behind; a message was dropped", msg.topic);
        }
        list.len()
    }

    pub(super) fn publish(&mut self, topic: String, data: Vec<u8>, reply: Reply<Published>) {
        let me = self.swarm.local_peer_id().to_string();
        let t = IdentTopic::new(topic.clone());
        let published = self.swarm.behaviour_mut().gossipsub.publish(t, data.clone());
        let (message_id, net_err) = match published {
            Ok(id) => (id.to_string(), None),
            Err(e) => (format!("local-{}", rand::random::<u64>()), Some(e)),
        };
        let local = self.deliver_local(PubsubMessage {
            topic: topic.clone(),
            from: Some(me),
            message_id: message_id.clone(),
            data: String::from_utf8_lossy(&data).into_owned(),
        });
        let peers = self.topic_peers(&topic);
        let out = match net_err {
            None => Ok(Published { topic, message_id, peers, local_subscribers: local }),
            // Nobody else subscribes: the local subscribers are all there is to reach.
            Some(gossipsub::PublishError::NoPeersSubscribedToTopic) if local > 0 => {
                Ok(Published { topic, message_id, peers: 0, local_subscribers: local })
            }
            Some(gossipsub::PublishError::NoPeersSubscribedToTopic) => Err(format!(
                "no connected peer subscribes to {topic:?} yet (subscriptions spread within a second of connecting)"
            )),
            Some(e) => Err(format!("publish to {topic:?}: {e}")),
        };
        let _ = reply.send(out);
    }

    pub(super) fn subscribe(&mut self, topic: String, tx: mpsc::Sender<PubsubMessage>, reply: Reply<()>) {
        let r = self.swarm.behaviour_mut().gossipsub.subscribe(&IdentTopic::new(topic.clone()));
        match r {
            Ok(_) => {
                self.pubsub.subs.entry(topic).or_default().push(tx);
                let _ = reply.send(Ok(()));
            }
            Err(e) => {
                let _ = reply.send(Err(format!("subscribe to {topic:?}: {e}")));
            }
        }
    }

    /// Connected peers that subscribe to `topic`.
    fn topic_peers(&self, topic: &str) -> usize {
        let hash = IdentTopic::new(topic).hash();
        self.swarm.behaviour().gossipsub.all_peers().filter(|(_, topics)| topics.contains(&&hash)).count()
    }

    /// Topics whose last local subscriber left are unsubscribed.
    pub(super) fn tick_pubsub(&mut self) {
        let idle: Vec<String> = self
            .pubsub
            .subs
            .iter_mut()
            .filter_map(|(t, l)| {
                l.retain(|tx| !tx.is_closed());
                l.is_empty().then(|| t.clone())
            })
            .collect();
        for t in idle {
            self.pubsub.subs.remove(&t);
            self.swarm.behaviour_mut().gossipsub.unsubscribe(&IdentTopic::new(t));
        }
    }

    pub(super) fn pubsub_status(&self) -> PubsubStatus {
        let mut peers: BTreeMap<String, usize> = BTreeMap::new();
        for (_, topics) in self.swarm.behaviour().gossipsub.all_peers() {
            for t in topics {
                *peers.entry(t.to_string()).or_default() += 1;
            }
        }
        PubsubStatus { subscribed: self.pubsub.subs.keys().cloned().collect(), peers, dropped: self.pubsub.dropped }
    }
}
