//! The decision core: the one path every service's requests take once its front door has read
//! and judged them (docs/design.md "The decision core").
//!
//! ```text
//! service policy → presence needed → dedupe → rate limit → prompt queue → approver → audit → answer
//! ```
//!
//! - **One prompt at a time per approver**, across all services: each approver has one turn, a
//!   fair (FIFO) queue that a request waits in under its own deadline. A PAM prompt and an SSH
//!   prompt can never be open on the same terminal at once, so a `y` typed for one cannot
//!   answer the other.
//! - **A requester that goes away withdraws its prompt**, queued or shown; the decision is
//!   recorded as `cancelled`, reason `withdrawn`.
//! - **Identical requests share one prompt** (the SSH agent's same key × caller × destination ×
//!   data); each still gets its own audit line.
//! - **The audit fails closed**: a decision is given only once its line is written
//!   ([`Decision`] is only made here, after the line); one that cannot be recorded becomes
//!   `failed` (`audit_failed`). Refusals made before any prompt are recorded too
//!   ([`Core::refuse`]).
//! - **An approver that cannot reach the person is skipped, never a denial**: the next approver
//!   of the chain is tried, and with none left the answer is `unavailable` (hosts fall back to
//!   the password).
//! - **Presence strength**: a request that needs `verified` presence is only shown to an
//!   approver that proves it (a password or a finger); with none, it is `unavailable` without
//!   a prompt.
//!
//! What a request shows and what its answer means on the wire stay with each service.

pub mod rate;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

use crate::approvers::{Approver, Outcome, Presence, Prompt, Required};
use crate::audit::{AuditError, AuditEvent, AuditLog, Durability, Service};
use crate::lock;
use crate::log::event;
use crate::now_ms;
use rate::RateLimiter;

/// Decisions `nod status` shows.
const RECENT: usize = 20;

/// A service's request to ask the person.
#[derive(Debug)]
pub struct Ask {
    pub prompt: Prompt,
    /// The audit line's fields; the core fills in the decision, presence, approver and reason.
    pub event: AuditEvent,
    /// When the answer stops mattering. An approval that comes later is not given.
    pub deadline: Instant,
    /// The least presence that counts.
    pub required: Required,
    /// The rate-limit bucket (e.g. host|service|user); `None` for none.
    pub rate_key: Option<String>,
    /// Requests with the same key share one prompt while it is open.
    pub share_key: Option<[u8; 32]>,
}

/// What the core decided, once it is on record. Only made here, after the audit line is
/// written, so holding one means the decision can be acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    outcome: Outcome,
    presence: Option<Presence>,
    approver: &'static str,
    reason: Option<&'static str>,
}

impl Decision {
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    pub fn approved(&self) -> bool {
        self.outcome == Outcome::Approved
    }

    /// How the person proved presence (approvals only).
    pub fn presence(&self) -> Option<Presence> {
        self.presence
    }

    /// Which approver answered, or `none`/`policy`.
    pub fn approver(&self) -> &'static str {
        self.approver
    }

    /// Why it is not an answer from a person: `no_approver`, `presence_unavailable`,
    /// `rate_limited`, `prompt_timeout`, `withdrawn`, `audit_failed`, `approver_failed`.
    pub fn reason(&self) -> Option<&'static str> {
        self.reason
    }

    /// A decision as the core would make it, for the services' mapping tests.
    #[cfg(test)]
    pub(crate) fn for_test(
        outcome: Outcome,
        presence: Option<Presence>,
        reason: Option<&'static str>,
    ) -> Self {
        Self {
            outcome,
            presence,
            approver: "test",
            reason,
        }
    }

    fn new(outcome: Outcome, approver: &'static str, reason: Option<&'static str>) -> Self {
        Self {
            outcome,
            presence: None,
            approver,
            reason,
        }
    }
}

/// The audit line of a decision made without a prompt could not be written: do not act on it.
#[derive(Debug, thiserror::Error)]
#[error("the audit log cannot be written, so the request is refused: {0}")]
pub struct NotRecorded(#[from] AuditError);

/// An approver and its turn.
#[derive(Debug)]
struct Seat {
    approver: Arc<dyn Approver>,
    turn: tokio::sync::Mutex<()>,
}

/// A request being decided, for `nod status`.
#[derive(Debug, Clone, Serialize)]
pub struct Open {
    pub id: u64,
    pub service: Service,
    pub kind: &'static str,
    /// The prompt's first line (escaped).
    pub summary: String,
    pub since_ms: u64,
    /// `queued` or the approver showing it.
    pub state: String,
}

/// A recent decision, for `nod status`.
#[derive(Debug, Clone, Serialize)]
pub struct Recent {
    pub time_ms: u64,
    pub service: Service,
    pub summary: String,
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<Presence>,
}

/// One approver as `nod status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ApproverInfo {
    pub name: &'static str,
    pub presence: Presence,
}

/// What `nod status` reports of the core.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub approvers: Vec<ApproverInfo>,
    /// How they were chosen: `the command line`, `agent.toml` or `auto (what it found)`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub approvers_chosen_by: String,
    pub open: Vec<Open>,
    pub recent: Vec<Recent>,
}

#[derive(Debug, Default)]
struct Board {
    open: Vec<Open>,
    recent: VecDeque<Recent>,
}

/// Rate limits per service: a flood of one service's prompts does not use up another's.
#[derive(Debug, Clone, Copy)]
pub struct RateSettings {
    pub burst: u32,
    pub per_minute: u32,
}

impl Default for RateSettings {
    fn default() -> Self {
        Self {
            burst: 5,
            per_minute: 20,
        }
    }
}

type Shared = watch::Receiver<Option<Decision>>;

/// The decision core: one per agent process, shared by its services.
#[derive(Debug)]
pub struct Core {
    seats: Vec<Seat>,
    audit: Arc<AuditLog>,
    rates: [Mutex<RateLimiter>; 3],
    shared: Mutex<HashMap<[u8; 32], Shared>>,
    board: Mutex<Board>,
    next_id: AtomicU64,
    /// How the approvers were chosen, for `nod status` and `nod doctor`.
    chosen_by: String,
}

fn service_index(s: Service) -> usize {
    match s {
        Service::Pam => 0,
        Service::Ssh => 1,
        Service::Secrets => 2,
    }
}

/// The audit word of an outcome.
pub fn decision_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Approved => "approved",
        Outcome::Denied => "denied",
        Outcome::Cancelled => "cancelled",
        Outcome::Unavailable => "unavailable",
        Outcome::Failed => "failed",
    }
}

fn first_line(prompt: &Prompt) -> String {
    prompt.text().lines().next().unwrap_or_default().to_owned()
}

/// Removes an open request from the board when its decision ends, however it ends.
struct OnBoard<'a> {
    core: &'a Core,
    id: u64,
}

impl Drop for OnBoard<'_> {
    fn drop(&mut self) {
        lock(&self.core.board).open.retain(|o| o.id != self.id);
    }
}

/// Tells the followers of a shared prompt its decision, or (if the leader went away first)
/// closes the channel so that one of them asks instead.
struct Leader<'a> {
    core: &'a Core,
    key: [u8; 32],
    tx: Option<watch::Sender<Option<Decision>>>,
}

impl Leader<'_> {
    fn finish(mut self, decision: Option<Decision>) {
        if let Some(tx) = self.tx.take() {
            lock(&self.core.shared).remove(&self.key);
            if let Some(d) = decision {
                let _ = tx.send(Some(d));
            }
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if self.tx.take().is_some() {
            lock(&self.core.shared).remove(&self.key);
        }
    }
}

/// Where a request stands with respect to identical ones.
enum Turn<'a> {
    Lead(Leader<'a>),
    Follow(Shared),
}

impl Core {
    /// A core asking through `approvers`, in order (empty: nobody can be asked), recording in
    /// `audit`. `pam_rate` limits remote-approval prompts (`[approval]` in agent.toml); the
    /// other services use the defaults.
    pub fn new(
        approvers: Vec<Arc<dyn Approver>>,
        audit: Arc<AuditLog>,
        pam_rate: RateSettings,
    ) -> Self {
        let limiter = |r: RateSettings| Mutex::new(RateLimiter::new(r.burst, r.per_minute));
        Self {
            seats: approvers
                .into_iter()
                .map(|approver| Seat {
                    approver,
                    turn: tokio::sync::Mutex::new(()),
                })
                .collect(),
            audit,
            rates: [
                limiter(pam_rate),
                limiter(RateSettings::default()),
                limiter(RateSettings::default()),
            ],
            shared: Mutex::new(HashMap::new()),
            board: Mutex::new(Board::default()),
            next_id: AtomicU64::new(1),
            chosen_by: String::new(),
        }
    }

    /// Says how the approvers were chosen (`agent.toml`, `auto (…)`), in the status.
    pub fn with_chosen_by(mut self, chosen_by: String) -> Self {
        self.chosen_by = chosen_by;
        self
    }

    pub fn audit_log(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// The approvers, in the order they are tried.
    pub fn approvers(&self) -> Vec<ApproverInfo> {
        self.seats
            .iter()
            .map(|s| ApproverInfo {
                name: s.approver.name(),
                presence: s.approver.presence(),
            })
            .collect()
    }

    /// Whether anyone at all can be asked.
    pub fn can_ask(&self) -> bool {
        !self.seats.is_empty()
    }

    /// The approvers, open requests and recent decisions.
    pub fn status(&self) -> Status {
        let board = lock(&self.board);
        Status {
            approvers: self.approvers(),
            approvers_chosen_by: self.chosen_by.clone(),
            open: board.open.clone(),
            recent: board.recent.iter().cloned().collect(),
        }
    }

    fn note_recent(&self, event: &AuditEvent, summary: String) {
        let mut board = lock(&self.board);
        if board.recent.len() == RECENT {
            board.recent.pop_front();
        }
        board.recent.push_back(Recent {
            time_ms: now_ms(),
            service: event.service,
            summary,
            decision: event.decision,
            reason: event.reason.clone(),
            presence: event.presence,
        });
    }

    fn write(&self, event: &AuditEvent, durability: Durability) -> Result<(), NotRecorded> {
        self.audit.append(event, now_ms(), durability).map_err(|e| {
            event!("{e}");
            NotRecorded(e)
        })
    }

    /// Records a refusal made before any prompt (`reason` says why). The caller refuses
    /// whatever this returns; `Err` only means the line is missing too, which is logged.
    pub fn refuse(&self, mut event: AuditEvent, reason: &str) -> Result<(), NotRecorded> {
        event.decision = "refused";
        event.reason = Some(reason.to_owned());
        let summary = format!(
            "{} refused: {reason}",
            event.action.as_deref().unwrap_or("request")
        );
        self.note_recent(&event, summary);
        self.write(&event, Durability::Synced)
    }

    /// Records a decision made by policy alone, with no prompt (a registered binary reading
    /// its secret, a signature under a remembered grant). `Err`: not recorded, so not given.
    pub fn allow_by_policy(&self, mut event: AuditEvent, reason: &str) -> Result<(), NotRecorded> {
        event.decision = "approved";
        event.approver = Some("policy");
        event.reason = Some(reason.to_owned());
        self.write(&event, Durability::Batched)
    }

    /// Records an outcome that followed a decision (the backend failed after an approval, a
    /// policy change could not be saved). Logged if it cannot be written.
    pub fn record(&self, mut event: AuditEvent, outcome: Outcome, reason: Option<&str>) {
        event.decision = decision_word(outcome);
        event.reason = reason.map(str::to_owned);
        let _ = self.write(&event, Durability::Synced);
    }

    fn turn(&self, key: Option<[u8; 32]>) -> Option<Turn<'_>> {
        let key = key?;
        let mut shared = lock(&self.shared);
        if let Some(rx) = shared.get(&key) {
            return Some(Turn::Follow(rx.clone()));
        }
        let (tx, rx) = watch::channel(None);
        shared.insert(key, rx);
        Some(Turn::Lead(Leader {
            core: self,
            key,
            tx: Some(tx),
        }))
    }

    /// Decides one request: asks the person (or shares an identical request's prompt),
    /// records the decision, and returns it. `gone` resolves when the requester has gone
    /// away; the prompt is then withdrawn.
    pub async fn decide(&self, ask: Ask, gone: impl Future<Output = ()>) -> Decision {
        let mut gone = pin!(gone);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let summary = first_line(&ask.prompt);
        lock(&self.board).open.push(Open {
            id,
            service: ask.event.service,
            kind: ask.prompt.kind(),
            summary: summary.clone(),
            since_ms: now_ms(),
            state: "queued".into(),
        });
        let _on_board = OnBoard { core: self, id };
        let mut shared = false;
        let decision = loop {
            match self.turn(ask.share_key) {
                Some(Turn::Follow(mut rx)) => {
                    event!("an identical request waits for the open prompt");
                    let wait = async {
                        loop {
                            if let Some(d) = *rx.borrow_and_update() {
                                return Some(d);
                            }
                            if rx.changed().await.is_err() {
                                return rx.borrow().as_ref().copied();
                            }
                        }
                    };
                    tokio::select! {
                        d = timeout_at(ask.deadline, wait) => match d {
                            Ok(Some(d)) => {
                                shared = true;
                                break d;
                            }
                            // The leader's requester went away: ask again, perhaps as leader.
                            Ok(None) => continue,
                            Err(_) => break Decision::new(Outcome::Unavailable, "none", Some("prompt_timeout")),
                        },
                        () = &mut gone => break Decision::new(Outcome::Cancelled, "none", Some("withdrawn")),
                    }
                }
                lead => {
                    let decision = self.ask_person(&ask, id, &mut gone).await;
                    if let Some(Turn::Lead(leader)) = lead {
                        let withdrawn = decision.reason == Some("withdrawn");
                        leader.finish((!withdrawn).then_some(decision));
                    }
                    break decision;
                }
            }
        };
        let mut event = ask.event;
        event.decision = decision_word(decision.outcome);
        event.presence = decision.presence;
        event.approver = Some(decision.approver);
        event.reason = decision
            .reason
            .map(str::to_owned)
            .or_else(|| shared.then(|| "shared prompt".to_owned()));
        let decision = match self.write(&event, Durability::Synced) {
            Ok(()) => decision,
            Err(_) => {
                event.decision = decision_word(Outcome::Failed);
                event.reason = Some("audit_failed".into());
                Decision::new(Outcome::Failed, decision.approver, Some("audit_failed"))
            }
        };
        self.note_recent(&event, summary);
        decision
    }

    /// The prompt itself: presence, rate limit, then each approver of the chain in turn until
    /// one reaches the person.
    async fn ask_person(
        &self,
        ask: &Ask,
        id: u64,
        gone: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Decision {
        if self.seats.is_empty() {
            return Decision::new(Outcome::Unavailable, "none", Some("no_approver"));
        }
        let seats: Vec<&Seat> = self
            .seats
            .iter()
            .filter(|s| s.approver.presence().satisfies(ask.required))
            .collect();
        if seats.is_empty() {
            event!(
                "{} needs verified presence (a password or a fingerprint), and no approver \
                 here proves it; answered unavailable",
                ask.prompt.kind()
            );
            return Decision::new(Outcome::Unavailable, "none", Some("presence_unavailable"));
        }
        if let Some(key) = &ask.rate_key {
            let limiter = &self.rates[service_index(ask.event.service)];
            if !lock(limiter).try_take(key, std::time::Instant::now()) {
                event!(
                    "{}: too many prompts; answered unavailable",
                    ask.prompt.kind()
                );
                return Decision::new(Outcome::Unavailable, "none", Some("rate_limited"));
            }
        }
        let mut failed = None;
        for seat in seats {
            let approver = seat.approver.name();
            let asking = async {
                let Ok(_turn) = timeout_at(ask.deadline, seat.turn.lock()).await else {
                    return Decision::new(Outcome::Unavailable, approver, Some("prompt_timeout"));
                };
                if let Some(open) = lock(&self.board).open.iter_mut().find(|o| o.id == id) {
                    open.state = approver.to_owned();
                }
                match timeout_at(
                    ask.deadline,
                    seat.approver.approve(&ask.prompt, ask.deadline),
                )
                .await
                {
                    Ok(outcome) => Decision::new(outcome, approver, None),
                    Err(_) => Decision::new(Outcome::Unavailable, approver, Some("prompt_timeout")),
                }
            };
            let mut decision = tokio::select! {
                d = asking => d,
                () = &mut *gone => {
                    event!("{}: the requester went away; prompt withdrawn", ask.prompt.kind());
                    return Decision::new(Outcome::Cancelled, approver, Some("withdrawn"));
                }
            };
            match decision.outcome {
                Outcome::Approved if Instant::now() > ask.deadline => {
                    // Too late to matter, and an approval must never outlive its request.
                    return Decision::new(Outcome::Unavailable, approver, Some("prompt_timeout"));
                }
                Outcome::Approved => {
                    decision.presence = Some(seat.approver.presence());
                    return decision;
                }
                Outcome::Denied | Outcome::Cancelled => return decision,
                Outcome::Unavailable if decision.reason == Some("prompt_timeout") => {
                    return decision;
                }
                Outcome::Unavailable => {
                    event!("approver {approver} cannot reach the person; trying the next");
                }
                Outcome::Failed => {
                    event!("approver {approver} failed; trying the next");
                    failed = Some(Decision::new(
                        Outcome::Failed,
                        approver,
                        Some("approver_failed"),
                    ));
                }
            }
        }
        failed.unwrap_or(Decision::new(
            Outcome::Unavailable,
            "none",
            Some("no_approver"),
        ))
    }
}

#[cfg(test)]
mod tests;
