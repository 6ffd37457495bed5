use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use super::*;
use crate::approvers::{ApprovalFuture, sample_prompt};
use crate::audit::verify;

/// An approver that answers `outcome` after `delay`, and counts prompts and how many were
/// open at once.
#[derive(Debug)]
struct Scripted {
    name: &'static str,
    presence: Presence,
    outcome: Outcome,
    delay: Duration,
    asked: AtomicUsize,
    open: AtomicUsize,
    most_open: AtomicUsize,
}

impl Scripted {
    fn new(name: &'static str, presence: Presence, outcome: Outcome, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            name,
            presence,
            outcome,
            delay,
            asked: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            most_open: AtomicUsize::new(0),
        })
    }

    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

impl Approver for Scripted {
    fn name(&self) -> &'static str {
        self.name
    }

    fn presence(&self) -> Presence {
        self.presence
    }

    fn approve<'a>(&'a self, _prompt: &'a Prompt, _deadline: Instant) -> ApprovalFuture<'a> {
        Box::pin(async move {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let now = self.open.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_open.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.open.fetch_sub(1, Ordering::SeqCst);
            self.outcome
        })
    }
}

struct Fixture {
    dir: PathBuf,
    log: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = crate::files::test_dir("decision");
        let log = dir.join("audit.jsonl");
        Self { dir, log }
    }

    fn core(&self, approvers: Vec<Arc<dyn Approver>>) -> Core {
        let audit = Arc::new(AuditLog::open(&self.log).unwrap());
        Core::new(approvers, audit, RateSettings::default())
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ask(service: Service) -> Ask {
    Ask {
        prompt: sample_prompt(),
        event: AuditEvent {
            service,
            action: Some("test".into()),
            ..Default::default()
        },
        deadline: Instant::now() + Duration::from_secs(10),
        required: Required::Any,
        rate_key: None,
        share_key: None,
    }
}

fn never() -> std::future::Pending<()> {
    std::future::pending()
}

#[tokio::test]
async fn prompts_of_all_services_are_shown_one_at_a_time() {
    let fx = Fixture::new();
    let tty = Scripted::new(
        "tty",
        Presence::Keypress,
        Outcome::Approved,
        Duration::from_millis(50),
    );
    let core = fx.core(vec![tty.clone()]);
    let (a, b, c) = tokio::join!(
        core.decide(ask(Service::Pam), never()),
        core.decide(ask(Service::Ssh), never()),
        core.decide(ask(Service::Secrets), never()),
    );
    assert!(a.approved() && b.approved() && c.approved());
    assert_eq!(tty.asked(), 3);
    assert_eq!(tty.most_open.load(Ordering::SeqCst), 1);
    let lines = fx.lines();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["presence"] == "keypress"));
    assert_eq!(
        verify(&fx.log).unwrap(),
        crate::audit::Verdict::Intact { entries: 3 }
    );
}

#[tokio::test]
async fn a_decision_that_cannot_be_recorded_is_not_given() {
    let fx = Fixture::new();
    let yes = Scripted::new(
        "command",
        Presence::Program,
        Outcome::Approved,
        Duration::ZERO,
    );
    let core = fx.core(vec![yes]);
    // The log can no longer be opened for writing: its path is now a directory.
    std::fs::remove_file(&fx.log).unwrap();
    std::fs::create_dir(&fx.log).unwrap();
    let d = core.decide(ask(Service::Secrets), never()).await;
    assert_eq!(d.outcome(), Outcome::Failed);
    assert_eq!(d.reason(), Some("audit_failed"));
    assert!(
        core.allow_by_policy(ask(Service::Secrets).event, "policy")
            .is_err()
    );
}

#[tokio::test]
async fn a_requester_that_goes_away_withdraws_its_prompt() {
    let fx = Fixture::new();
    let slow = Scripted::new(
        "tty",
        Presence::Keypress,
        Outcome::Approved,
        Duration::from_secs(30),
    );
    let core = fx.core(vec![slow]);
    let d = core
        .decide(
            ask(Service::Pam),
            tokio::time::sleep(Duration::from_millis(20)),
        )
        .await;
    assert_eq!(d.outcome(), Outcome::Cancelled);
    assert_eq!(d.reason(), Some("withdrawn"));
    let lines = fx.lines();
    assert_eq!(lines[0]["decision"], "cancelled");
    assert_eq!(lines[0]["reason"], "withdrawn");
    assert!(core.status().open.is_empty());
}

#[tokio::test]
async fn verified_presence_is_never_asked_of_a_weaker_approver() {
    let fx = Fixture::new();
    let click = Scripted::new(
        "desktop",
        Presence::Click,
        Outcome::Approved,
        Duration::ZERO,
    );
    let core = fx.core(vec![click.clone()]);
    let mut a = ask(Service::Pam);
    a.required = Required::Verified;
    let d = core.decide(a, never()).await;
    assert_eq!(d.outcome(), Outcome::Unavailable);
    assert_eq!(d.reason(), Some("presence_unavailable"));
    assert_eq!(click.asked(), 0);

    let finger = Scripted::new(
        "fprintd",
        Presence::Fingerprint,
        Outcome::Approved,
        Duration::ZERO,
    );
    let core = fx.core(vec![click.clone(), finger.clone()]);
    let mut a = ask(Service::Pam);
    a.required = Required::Verified;
    let d = core.decide(a, never()).await;
    assert!(d.approved());
    assert_eq!(d.presence(), Some(Presence::Fingerprint));
    assert_eq!((click.asked(), finger.asked()), (0, 1));
}

#[tokio::test]
async fn an_approver_that_cannot_reach_the_person_is_skipped_never_a_denial() {
    let fx = Fixture::new();
    let desktop = Scripted::new(
        "desktop",
        Presence::Click,
        Outcome::Unavailable,
        Duration::ZERO,
    );
    let broken = Scripted::new("askpass", Presence::Click, Outcome::Failed, Duration::ZERO);
    let tty = Scripted::new("tty", Presence::Keypress, Outcome::Approved, Duration::ZERO);
    let core = fx.core(vec![desktop.clone(), broken.clone(), tty.clone()]);
    let d = core.decide(ask(Service::Ssh), never()).await;
    assert!(d.approved());
    assert_eq!(d.approver(), "tty");
    assert_eq!((desktop.asked(), broken.asked(), tty.asked()), (1, 1, 1));

    let core = fx.core(vec![desktop, broken]);
    let d = core.decide(ask(Service::Pam), never()).await;
    assert_eq!(d.outcome(), Outcome::Failed);
    assert_eq!(d.reason(), Some("approver_failed"));

    let core = fx.core(Vec::new());
    let d = core.decide(ask(Service::Pam), never()).await;
    assert_eq!(d.outcome(), Outcome::Unavailable);
    assert_eq!(d.reason(), Some("no_approver"));
}

#[tokio::test]
async fn identical_requests_share_one_prompt_and_each_is_recorded() {
    let fx = Fixture::new();
    let tty = Scripted::new(
        "tty",
        Presence::Keypress,
        Outcome::Approved,
        Duration::from_millis(50),
    );
    let core = fx.core(vec![tty.clone()]);
    let shared = |key| {
        let mut a = ask(Service::Ssh);
        a.share_key = Some(key);
        a
    };
    let (a, b, c) = tokio::join!(
        core.decide(shared([1; 32]), never()),
        core.decide(shared([1; 32]), never()),
        core.decide(shared([2; 32]), never()),
    );
    assert!(a.approved() && b.approved() && c.approved());
    assert_eq!(tty.asked(), 2);
    let lines = fx.lines();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["reason"] == "shared prompt")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_follower_asks_itself_when_the_leaders_requester_goes_away() {
    let fx = Fixture::new();
    let tty = Scripted::new(
        "tty",
        Presence::Keypress,
        Outcome::Approved,
        Duration::from_millis(100),
    );
    let core = fx.core(vec![tty.clone()]);
    let shared = || {
        let mut a = ask(Service::Ssh);
        a.share_key = Some([7; 32]);
        a
    };
    let (leader, follower) = tokio::join!(
        core.decide(shared(), tokio::time::sleep(Duration::from_millis(20))),
        core.decide(shared(), never()),
    );
    assert_eq!(leader.reason(), Some("withdrawn"));
    assert!(follower.approved());
    assert_eq!(tty.asked(), 2);
}

#[tokio::test]
async fn a_flood_of_prompts_is_rate_limited_per_bucket() {
    let fx = Fixture::new();
    let yes = Scripted::new(
        "command",
        Presence::Program,
        Outcome::Approved,
        Duration::ZERO,
    );
    let core = fx.core(vec![yes]);
    let limited = |key: &str| {
        let mut a = ask(Service::Pam);
        a.rate_key = Some(key.to_owned());
        a
    };
    let mut approved = 0;
    for _ in 0..8 {
        if core.decide(limited("web-1"), never()).await.approved() {
            approved += 1;
        }
    }
    assert_eq!(approved, RateSettings::default().burst as usize);
    let d = core.decide(limited("web-1"), never()).await;
    assert_eq!(d.reason(), Some("rate_limited"));
    assert!(core.decide(limited("web-2"), never()).await.approved());
}

#[tokio::test]
async fn refusals_and_policy_decisions_are_recorded() {
    let fx = Fixture::new();
    let core = fx.core(Vec::new());
    core.refuse(ask(Service::Ssh).event, "destination").unwrap();
    core.allow_by_policy(ask(Service::Secrets).event, "policy")
        .unwrap();
    core.audit_log().flush().unwrap();
    let lines = fx.lines();
    assert_eq!(lines[0]["decision"], "refused");
    assert_eq!(lines[0]["reason"], "destination");
    assert_eq!(lines[1]["decision"], "approved");
    assert_eq!(lines[1]["approver"], "policy");
    assert_eq!(core.status().recent.len(), 1);
}

#[tokio::test]
async fn an_approval_after_the_deadline_is_not_given() {
    let fx = Fixture::new();
    let late = Scripted::new(
        "command",
        Presence::Program,
        Outcome::Approved,
        Duration::from_millis(200),
    );
    let core = fx.core(vec![late]);
    let mut a = ask(Service::Pam);
    a.deadline = Instant::now() + Duration::from_millis(50);
    let d = core.decide(a, never()).await;
    assert_eq!(d.outcome(), Outcome::Unavailable);
    assert_eq!(d.reason(), Some("prompt_timeout"));
}
