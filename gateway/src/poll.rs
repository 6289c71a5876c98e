//! Long polling (`GET /poll`): a poll session is a room member like a
//! WebSocket connection, kept on the node between polls; each poll takes
//! what its queue holds, or waits for it up to `poll.timeout_ms`.
//!
//! The `cursor` of an answer names the session, the answer's number and
//! the position after it. A poll with the cursor of the last answer
//! acknowledges it; a poll with the one before (the last answer was lost)
//! gets that answer's events again, with anything newer. A cursor whose
//! session is gone (ended, or on another node) opens a new session that
//! resumes every room from the cursor's position with `since`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_protocol::position::{Positions, Tracker};
use switchboard_protocol::{CloseCode, ConnId, EventSink};
use tokio::sync::Notify;

use crate::feed::{busy, refused, Feed, Refused};
use crate::node::NodeCtx;
use crate::outbound::{Batch, Outbound};
use crate::session::Conn;
use crate::transport::{Registration, Transport};

/// One poll session, between polls and during them.
pub struct PollSession {
    conn: Arc<Conn>,
    rooms: Vec<String>,
    presence: bool,
    state: tokio::sync::Mutex<PollState>,
    /// Raised by each poll, so that an older one still waiting answers.
    polls: AtomicU64,
    superseded: Notify,
    /// Leaves rooms and presence when the session is dropped.
    _registration: Registration,
}

struct PollState {
    /// The number of the last answer.
    answer: u64,
    tracker: Tracker,
    /// The last answer's events, until the next poll acknowledges them.
    unacked: Vec<Value>,
}

impl PollState {
    /// Adds a batch's events to the answer; `true` if the session ended.
    fn take(&mut self, batch: &Batch, out: &Outbound) -> bool {
        for (event, _) in &batch.events {
            match self.tracker.translate(event) {
                Ok(texts) => {
                    for text in texts {
                        if text.fatal {
                            out.close(CloseCode::Internal, "a room could not be joined");
                        }
                        self.unacked.push(text.to_json());
                    }
                }
                Err(e) => tracing::error!(error = %e, "an event has no JSON form"),
            }
        }
        batch.closing.is_some()
    }
}

/// What a cursor says.
struct Cursor {
    session: ConnId,
    answer: u64,
    positions: String,
}

fn parse_cursor(text: &str) -> Option<Cursor> {
    let (head, positions) = text.split_once('~')?;
    let (session, answer) = head.split_once('-')?;
    Some(Cursor {
        session: ConnId(u64::from_str_radix(session, 16).ok()?),
        answer: answer.parse().ok()?,
        positions: positions.to_owned(),
    })
}

/// Answers one poll: `Ok` is the JSON body, `Err` a refusal.
pub async fn poll(
    node: &Arc<NodeCtx>,
    query: Option<&str>,
    authorization: Option<&str>,
    client: std::net::IpAddr,
) -> Result<Value, Refused> {
    let feed = Feed::parse(node, query, authorization)?;
    let cursor = crate::auth::query_param(query, "cursor")
        .map_err(|e| refused(400, e.to_string()))?
        .map(|c| {
            parse_cursor(&c).ok_or_else(|| {
                refused(
                    400,
                    format!(
                        "cursor: {:?} is not a cursor this server wrote",
                        c.chars().take(80).collect::<String>()
                    ),
                )
            })
        })
        .transpose()?;
    let from = feed.positions(cursor.as_ref().map(|c| c.positions.as_str()), "cursor")?;
    let timeout = node.settings.poll_timeout();
    if let Some(c) = &cursor {
        let session = node.polls.get(&c.session).map(|s| s.value().clone());
        if let Some(session) = session.filter(|s| s.serves(&feed) && !s.conn.out.is_closed()) {
            if let Some(answer) = session.answer(node, c.answer, timeout).await {
                return Ok(answer);
            }
        }
    }
    node.admit().map_err(busy)?;
    let session = open(node, feed, from, client).await;
    Ok(session.first_answer(node, timeout).await)
}

/// A new session: joined to every room, its first answer prepared.
async fn open(
    node: &Arc<NodeCtx>,
    feed: Feed,
    from: Positions,
    client: std::net::IpAddr,
) -> Arc<PollSession> {
    let (conn, registration) = feed.open(node, &from, Transport::Poll, client).await;
    let hello = feed.hello(node, &conn).to_json();
    let session = Arc::new(PollSession {
        conn,
        rooms: feed.rooms.clone(),
        presence: feed.presence,
        state: tokio::sync::Mutex::new(PollState {
            answer: 0,
            tracker: Tracker::new(feed.rooms, from),
            unacked: vec![hello],
        }),
        polls: AtomicU64::new(0),
        superseded: Notify::new(),
        _registration: registration,
    });
    node.polls.insert(session.conn.id, session.clone());
    session
}

impl PollSession {
    /// A new session's first answer: `hello` and the answers of its joins,
    /// waited for up to `timeout`.
    async fn first_answer(&self, node: &NodeCtx, timeout: Duration) -> Value {
        let out = &self.conn.out;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut state = self.state.lock().await;
        state.answer = 1;
        let mut ended = false;
        while !state.tracker.all_answered() && !ended {
            let batch = tokio::select! {
                batch = out.next_batch() => batch,
                () = tokio::time::sleep_until(deadline) => break,
            };
            ended = state.take(&batch, out);
        }
        let body = self.body(&state.unacked, state.answer, state.tracker.positions());
        drop(state);
        if ended {
            node.polls.remove(&self.conn.id);
        }
        body
    }

    /// The same rooms for the same user: a cursor cannot move a session to
    /// another client.
    fn serves(&self, feed: &Feed) -> bool {
        self.rooms == feed.rooms
            && self.presence == feed.presence
            && feed
                .identity
                .user
                .as_deref()
                .is_none_or(|u| u == &*self.conn.user)
    }

    /// Answers a poll that names answer `n`; `None` if the cursor is not
    /// one of the last two answers (the session is then ended).
    async fn answer(&self, node: &NodeCtx, n: u64, timeout: Duration) -> Option<Value> {
        let out = &self.conn.out;
        out.touch();
        let me = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
        self.superseded.notify_waiters();
        let mut state = self.state.lock().await;
        let wait = if n == state.answer {
            // The last answer arrived: forget it, answer the next one.
            state.unacked.clear();
            state.answer += 1;
            true
        } else if n + 1 == state.answer {
            // The last answer was lost: again, with anything newer.
            false
        } else {
            drop(state);
            out.close(CloseCode::Normal, "cursor out of date");
            node.polls.remove(&self.conn.id);
            return None;
        };
        let batch = if wait || out.queued() > 0 || out.is_closed() {
            let superseded = self.superseded.notified();
            tokio::pin!(superseded);
            superseded.as_mut().enable();
            let limit = if wait { timeout } else { Duration::ZERO };
            if self.polls.load(Ordering::SeqCst) != me {
                None
            } else {
                tokio::select! {
                    batch = out.next_batch() => Some(batch),
                    () = tokio::time::sleep(limit) => None,
                    () = &mut superseded => None,
                }
            }
        } else {
            None
        };
        let ended = batch.is_some_and(|b| state.take(&b, out));
        out.touch();
        let body = self.body(&state.unacked, state.answer, state.tracker.positions());
        drop(state);
        if ended {
            // What it had is answered; the next poll resumes from the cursor.
            node.polls.remove(&self.conn.id);
        }
        Some(body)
    }

    fn body(&self, events: &[Value], answer: u64, positions: &Positions) -> Value {
        json!({
            "cursor": format!("{:x}-{answer}~{}", self.conn.id.0, positions.encode()),
            "events": events,
        })
    }
}

/// Ends the sessions whose member was closed while no poll was waiting
/// (presence expired it, the node drains, its queue overflowed), and
/// forgets the HTTP publish allowances that refilled, until `stop`: once a
/// second.
pub async fn reap(node: Arc<NodeCtx>, stop: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        node.polls.retain(|_, s| !s.conn.out.is_closed());
        let now = std::time::Instant::now();
        node.publish_buckets.retain(|_, b| !b.is_full(now));
    }
}
