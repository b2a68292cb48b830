//! The simulation's client: writes (with idempotency keys, retried, in bursts) and
//! linearizable reads through any node, recorded in the history the checker judges.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use engram_core::{Memory, MemoryId};
use engram_replication::codec::{Message, ProposeOutcome};
use engram_storage::requests::Answer;
use engram_storage::{Command, Op};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::checker::{History, Read, Retry, Write, WriteOutcome};
use crate::{call, space, GIVE_UP_AT, HEAL_AT};

/// Sends `msg` to `node`, following "not the leader" once; `None` when no answer came.
async fn ask(node: u64, msg: Message) -> Option<(u64, Message)> {
    let mut to = node;
    for _ in 0..2 {
        let reply = tokio::time::timeout(Duration::from_secs(2), call(to, msg.encode(&space())))
            .await
            .ok()?
            .ok()?;
        let (_, m) = Message::decode(&reply).ok()?;
        match &m {
            Message::ProposeReply(ProposeOutcome::NotLeader(Some(l)))
            | Message::ReadIdsReply(Err(ProposeOutcome::NotLeader(Some(l))))
                if *l != to =>
            {
                to = *l;
            }
            _ => return Some((to, m)),
        }
    }
    None
}

fn memory(id: &str) -> Memory {
    Memory {
        id: MemoryId::new(id).unwrap(),
        content: format!("memory {id}"),
        embedding: vec![0.5, 0.25, 0.125, 1.0],
        confidence: 0.5,
        timestamp_us: 1_700_000_000_000_000,
        metadata: Default::default(),
        links: vec![],
    }
}

fn command(op: Op) -> Message {
    Message::Propose(Command { op, request: None })
}

/// Writes memory `id` with the idempotency `key` (received at simulated time `at`): the
/// outcome, and the memory the answer names.
async fn keyed_write(
    target: u64,
    id: &str,
    key: &str,
    leader: &mut u64,
    at: Duration,
) -> (WriteOutcome, Option<String>) {
    let msg = Message::Propose(Command {
        op: Op::Remember(memory(id)),
        request: Some((
            key.to_string(),
            1_700_000_000_000_000 + at.as_micros() as i64,
        )),
    });
    match ask(target, msg).await {
        Some((at, Message::ProposeReply(ProposeOutcome::Applied(r)))) => {
            *leader = at;
            let named = match r.answer {
                Some(Answer::Stored(ms)) if ms.len() == 1 => Some(ms[0].id.as_str().to_string()),
                _ => None,
            };
            (WriteOutcome::Acked, named)
        }
        Some((_, Message::ProposeReply(ProposeOutcome::NotLeader(_)))) => {
            (WriteOutcome::Refused, None)
        }
        _ => (WriteOutcome::Unknown, None),
    }
}

pub(crate) async fn client_main(
    n: u64,
    ops: usize,
    seed: u64,
    history: Rc<RefCell<History>>,
) -> turmoil::Result {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xc11e);
    let now = || turmoil::sim_elapsed().unwrap_or_default();
    // The space, created through the group (retried: idempotent by design).
    loop {
        let create = command(Op::SpaceCreate {
            dimension: 4,
            created_at_us: 1,
            embedder: String::new(),
        });
        if let Some((_, Message::ProposeReply(ProposeOutcome::Applied(_)))) =
            ask(rng.gen_range(1..=n), create).await
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if now() > HEAL_AT {
            break;
        }
    }
    let mut leader = 1;
    for i in 0..ops {
        let target = if rng.gen_bool(0.7) {
            leader
        } else {
            rng.gen_range(1..=n)
        };
        let invoked = now();
        if rng.gen_bool(0.1) {
            // A burst: several writes at once through one node, which proposes them in batch
            // entries (more than MAX_IN_FLIGHT at once).
            let ids: Vec<String> = (0..6).map(|j| format!("w{i}b{j}")).collect();
            let keys: Vec<String> = ids.iter().map(|id| format!("k{id}")).collect();
            let at = now();
            let mut leaders = vec![leader; ids.len()];
            let outcomes = futures_util::future::join_all(
                ids.iter()
                    .zip(&keys)
                    .zip(leaders.iter_mut())
                    .map(|((id, key), l)| keyed_write(target, id, key, l, at)),
            )
            .await;
            let returned = now();
            let mut h = history.borrow_mut();
            for (id, (outcome, answered)) in ids.into_iter().zip(outcomes) {
                if outcome == WriteOutcome::Acked && answered.as_deref() != Some(id.as_str()) {
                    return Err(format!("{id} was answered with {answered:?}").into());
                }
                tracing::info!(target: "sim", "client {id} (burst) via n{target}: {outcome:?}");
                h.writes.push(Write {
                    id,
                    invoked,
                    returned,
                    outcome,
                });
            }
        } else if rng.gen_bool(0.75) {
            // Every write carries an idempotency key.
            let id = format!("w{i}");
            let key = format!("k{i}");
            let (outcome, _) = keyed_write(target, &id, &key, &mut leader, now()).await;
            tracing::info!(target: "sim", "client {id} via n{target}: {outcome:?}");
            history.borrow_mut().writes.push(Write {
                id: id.clone(),
                invoked,
                returned: now(),
                outcome: outcome.clone(),
            });
            // A write without an answer is sent again, and an acknowledged one sometimes
            // (a duplicate): same key, a new memory id. The answer names the first's memory
            // or the retry's; never are both stored.
            if outcome == WriteOutcome::Unknown
                || (outcome == WriteOutcome::Acked && rng.gen_bool(0.1))
            {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(5..60))).await;
                let again = format!("w{i}r");
                let target = rng.gen_range(1..=n);
                let retried = now();
                let (o, answered) = keyed_write(target, &again, &key, &mut leader, now()).await;
                tracing::info!(target: "sim", "client {again} (retry of {id}) via n{target}: {o:?} {answered:?}");
                let mut h = history.borrow_mut();
                let returned = now();
                if answered.as_deref() == Some(id.as_str()) {
                    // The first was stored: the retry is not, and the first is acknowledged.
                    h.writes.push(Write {
                        id: id.clone(),
                        invoked,
                        returned,
                        outcome: WriteOutcome::Acked,
                    });
                }
                let outcome = match &answered {
                    Some(a) if *a == again => WriteOutcome::Acked,
                    Some(_) => WriteOutcome::Refused,
                    None if o == WriteOutcome::Refused => WriteOutcome::Refused,
                    None => WriteOutcome::Unknown,
                };
                h.writes.push(Write {
                    id: again.clone(),
                    invoked: retried,
                    returned,
                    outcome,
                });
                h.retries.push(Retry {
                    first: id,
                    again,
                    answered,
                });
            }
        } else if let Some((at, Message::ReadIdsReply(Ok(ids)))) =
            ask(target, Message::ReadIds).await
        {
            leader = at;
            history.borrow_mut().reads.push(Read {
                invoked,
                returned: now(),
                ids: ids.into_iter().collect(),
            });
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..60))).await;
    }
    // After the faults heal, the state every acknowledged write must be in.
    tokio::time::sleep(HEAL_AT.saturating_sub(now()) + Duration::from_secs(1)).await;
    while now() < GIVE_UP_AT {
        for node in 1..=n {
            if let Some((at, Message::ReadIdsReply(Ok(ids)))) = ask(node, Message::ReadIds).await {
                tracing::info!(target: "sim", "final read from n{at}: {ids:?}");
                history.borrow_mut().last = Some(ids.into_iter().collect());
                // Time for every replica to apply what the leader has: then they converge.
                tokio::time::sleep(Duration::from_millis(600)).await;
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
