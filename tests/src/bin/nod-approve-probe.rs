//! Asks one of nod's approvers, as the agent does, and prints what it answered: the approver
//! tests run it against real notification servers, polkitd and fprintd.
//!
//! Usage: nod-approve-probe APPROVER PROMPT STEP...
//! - APPROVER: an `--approver` kind (`desktop`, `polkit`, `fprintd`, …), built by
//!   `approvers::select` as `nod agent` builds it (the first of a list is asked);
//! - PROMPT: `pam`, `ssh` or `secrets`, a sample prompt whose peer-supplied text holds markup
//!   and quotes;
//! - STEP: `ask` (deadline 20 s), `ask:MS` (deadline MS ms), `drop:MS` (the requester goes away
//!   after MS ms: the prompt's future is dropped, then the probe lingers 500 ms so clean-up can
//!   run), or `wait:PATH` (until PATH exists, at most 30 s).
//!
//! Prints `outcome: approved|denied|cancelled|unavailable|failed|dropped` per asking step.

#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use nod_agent::approvers::{
    self, ApproverChoice, Environment, Outcome, PamPrompt, Prompt, SecretsPrompt, SshDestination,
    SshSignPrompt,
};
use nod_agent::caller::chain::ProcessLink;
use nod_agent::config::ApproverConfig;

fn prompt(kind: &str) -> Option<Prompt> {
    Some(match kind {
        "pam" => Prompt::Pam(PamPrompt {
            host: "web-1.example.com".into(),
            host_id: "web-1".into(),
            service: "sudo".into(),
            user: "alice".into(),
            ruser: Some("alice".into()),
            tty: Some("pts/3".into()),
            rhost: Some("10.0.0.5".into()),
            command: Some("/usr/bin/apt install <b>pkg</b> && echo 'done'".into()),
            request_id: "probe-1".into(),
        }),
        "ssh" => Prompt::SshSign(SshSignPrompt {
            key_comment: "alice@laptop <work>".into(),
            fingerprint: "SHA256:Qm9iIGtleSBmaW5nZXJwcmludA".into(),
            caller_pid: Some(4242),
            caller_exe: Some("/usr/bin/ssh".into()),
            process_chain: vec![
                ProcessLink {
                    pid: 4242,
                    comm: "ssh".into(),
                    exe: Some("/usr/bin/ssh".into()),
                },
                ProcessLink {
                    pid: 4241,
                    comm: "git".into(),
                    exe: Some("/usr/bin/git".into()),
                },
                ProcessLink {
                    pid: 4000,
                    comm: "zsh".into(),
                    exe: None,
                },
            ],
            destination: Some(SshDestination {
                names: vec!["github.com".into()],
                host_key_fingerprint: "SHA256:aG9zdCBrZXk".into(),
            }),
            forwarded: false,
            purpose: "ssh login as git".into(),
        }),
        "secrets" => Prompt::SecretsRegister(SecretsPrompt {
            path: "/usr/local/bin/deploy-tool".into(),
            hash: "sha256:5d41402abc4b2a76b9719d911017c592".into(),
            previous_hash: None,
            read: vec!["aws/prod".into(), "db/<main>".into()],
            write: vec!["cache/token".into()],
            search: false,
            interpreter: false,
            writable: false,
            legacy_protocol: false,
            requested_by: vec![
                ProcessLink {
                    pid: 5150,
                    comm: "nod".into(),
                    exe: Some("/usr/bin/nod".into()),
                },
                ProcessLink {
                    pid: 5100,
                    comm: "bash".into(),
                    exe: Some("/usr/bin/bash".into()),
                },
            ],
        }),
        _ => return None,
    })
}

fn word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Approved => "approved",
        Outcome::Denied => "denied",
        Outcome::Cancelled => "cancelled",
        Outcome::Unavailable => "unavailable",
        Outcome::Failed => "failed",
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!("usage: nod-approve-probe APPROVER pam|ssh|secrets STEP...");
        ExitCode::from(2)
    };
    let [kind, prompt_kind, steps @ ..] = args.as_slice() else {
        return usage();
    };
    let (Ok(kind), Some(prompt)) = (approvers::parse_choice(kind), prompt(prompt_kind)) else {
        return usage();
    };
    let choice = ApproverChoice {
        kind: Some(kind),
        command: None,
    };
    let chain = approvers::select(&choice, &ApproverConfig::default(), &Environment::default());
    let approver = match chain.map(|c| c.into_iter().next()) {
        Ok(Some(approver)) => approver,
        Ok(None) => return usage(),
        Err(e) => {
            eprintln!("nod-approve-probe: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        for step in steps {
            let (what, arg) = step.split_once(':').unwrap_or((step, ""));
            let ms = |default: u64| arg.parse().unwrap_or(default);
            match what {
                "ask" => {
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms(20_000));
                    let outcome = approver.approve(&prompt, deadline).await;
                    println!("outcome: {}", word(outcome));
                }
                "drop" => {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                    let asking = approver.approve(&prompt, deadline);
                    match tokio::time::timeout(Duration::from_millis(ms(1000)), asking).await {
                        Ok(outcome) => println!("outcome: {}", word(outcome)),
                        Err(_) => {
                            println!("outcome: dropped");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
                "wait" => {
                    let end = tokio::time::Instant::now() + Duration::from_secs(30);
                    while !Path::new(arg).exists() && tokio::time::Instant::now() < end {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                _ => eprintln!("nod-approve-probe: unknown step {step:?}"),
            }
        }
    });
    ExitCode::SUCCESS
}
