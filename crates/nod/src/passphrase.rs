//! Reading a passphrase: from the terminal with echo off, or one line from stdin.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::AsFd;

use anyhow::{Context, Result, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
use zeroize::Zeroizing;

/// Longest passphrase read, in bytes.
const MAX_LEN: usize = 1024;

/// Reads a passphrase. With `from_stdin`, one line from standard input (for scripts); else
/// `prompt` is written to the controlling terminal and the answer read from it without echo.
///
/// Ctrl-C or Ctrl-Z (or SIGTERM, SIGHUP, SIGQUIT) at the prompt cancels it and puts the echo
/// back before the signal takes effect: those signals are held while the echo is off and
/// watched through a signalfd. (After Ctrl-Z and `fg`, nod exits with "cancelled".)
pub fn read(prompt: &str, from_stdin: bool) -> Result<Zeroizing<Vec<u8>>> {
    if from_stdin {
        // Unbuffered: `Stdin`'s own buffer would keep a copy of the passphrase that nothing
        // wipes.
        let fd = std::io::stdin().as_fd().try_clone_to_owned();
        return read_line(&mut std::fs::File::from(fd.context("standard input")?));
    }
    let mut tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask for the passphrase on; pipe it in with --passphrase-stdin")?;
    let mut held = SigSet::empty();
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGTSTP,
    ] {
        held.add(signal);
    }
    let before = held
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .context("holding signals")?;
    let signals = SignalFd::with_flags(&held, SfdFlags::SFD_CLOEXEC).context("signalfd")?;

    let saved = tcgetattr(tty.as_fd()).context("the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(tty.as_fd(), SetArg::TCSANOW, &quiet).context("turning off the echo")?;
    let line = tty
        .write_all(prompt.as_bytes())
        .map_err(anyhow::Error::from)
        .and_then(|()| wait_for_line(&tty, &signals))
        .and_then(|()| read_line(&mut tty));
    let restored = tcsetattr(tty.as_fd(), SetArg::TCSANOW, &saved);
    // A signal that came while the echo was off takes effect here, with the echo back on.
    before.thread_set_mask().context("releasing signals")?;
    restored.context("restoring the terminal")?;
    line
}

/// Waits until the terminal has a line (canonical mode hands over whole lines) or a held
/// signal arrives.
fn wait_for_line(tty: &impl AsFd, signals: &SignalFd) -> Result<()> {
    let mut fds = [
        PollFd::new(tty.as_fd(), PollFlags::POLLIN),
        PollFd::new(signals.as_fd(), PollFlags::POLLIN),
    ];
    loop {
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for the passphrase"),
            Ok(_) => {}
        }
        if fds[1].any().unwrap_or(false) {
            bail!("cancelled");
        }
        if fds[0].any().unwrap_or(false) {
            return Ok(());
        }
    }
}

/// One line (without its newline), byte by byte so nothing after it is consumed.
fn read_line(input: &mut impl Read) -> Result<Zeroizing<Vec<u8>>> {
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_LEN));
    let mut byte = [0u8];
    loop {
        match input.read(&mut byte).context("reading the passphrase")? {
            0 if line.is_empty() => bail!("no passphrase given"),
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ if line.len() == MAX_LEN => bail!("passphrase longer than {MAX_LEN} bytes"),
            _ => line.push(byte[0]),
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_at_the_newline_and_are_capped() {
        assert_eq!(
            &read_line(&mut &b"secret\nrest"[..]).unwrap()[..],
            b"secret"
        );
        assert_eq!(&read_line(&mut &b"dos\r\n"[..]).unwrap()[..], b"dos");
        assert_eq!(
            &read_line(&mut &b"no newline"[..]).unwrap()[..],
            b"no newline"
        );
        assert!(read_line(&mut &b""[..]).is_err());
        assert!(read_line(&mut &vec![b'a'; MAX_LEN + 1][..]).is_err());
        assert_eq!(
            read_line(&mut &vec![b'a'; MAX_LEN][..]).unwrap().len(),
            MAX_LEN
        );
    }
}
