//! Processes held by pidfd: a pidfd names one process for its whole life and never another, so
//! a pid number read through it cannot have been reused.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Whether the process is still running (a pidfd becomes readable when it exits).
pub fn alive(pidfd: &impl AsFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

/// The process's pid as this process's pid namespace sees it (`Pid:` of its fdinfo): `None`
/// when it has exited, or lives in a pid namespace this one cannot see into.
pub fn pid_of(pidfd: &impl AsFd) -> Option<i32> {
    let info =
        fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_fd().as_raw_fd())).ok()?;
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()?;
    (pid > 0).then_some(pid)
}

/// Whether two pidfds name the same live process: two live processes never share a pid.
pub fn same_process(a: &OwnedFd, b: &OwnedFd) -> bool {
    alive(a) && alive(b) && pid_of(a).is_some_and(|p| Some(p) == pid_of(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(pid: u32) -> OwnedFd {
        let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap()
    }

    #[test]
    fn two_pidfds_of_one_process_are_the_same_and_of_two_are_not() {
        let me = std::process::id();
        let (a, b) = (open(me), open(me));
        assert!(same_process(&a, &b));
        assert_eq!(pid_of(&a), Some(me as i32));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let other = open(child.id());
        assert!(!same_process(&a, &other));
        assert!(alive(&other));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(&other));
        assert_eq!(pid_of(&other), None);
    }
}
