//! The agent's one piece of `unsafe`: the socket options and control messages that carry the
//! kernel's pidfd of a peer, which neither `nix` nor `rustix` wraps (Linux ≥ 6.5:
//! `SO_PASSPIDFD`, `SCM_PIDFD`), taking ownership of the descriptors the kernel installs for a
//! received message, and `malloc_trim`.

#![allow(unsafe_code)]

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::libc;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};

/// `SO_PASSPIDFD` (include/uapi/asm-generic/socket.h): attach `SCM_PIDFD` to every message.
const SO_PASSPIDFD: libc::c_int = 76;
/// `SCM_PIDFD`: a pidfd of the sending process, installed by the kernel.
const SCM_PIDFD: libc::c_int = 0x04;

/// Asks the kernel to attach the sender's pidfd to every message read from `socket`.
/// Fails with `ENOPROTOOPT` on kernels before 6.5.
pub fn set_pass_pidfd(socket: &impl AsFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `socket` is an open descriptor for the duration of the call; `on` is a live
    // c_int and the length passed is its size, as setsockopt(2) requires.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSPIDFD,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What the kernel said about the sender of one chunk.
#[derive(Debug, Default)]
pub struct Received {
    pub bytes: usize,
    /// `SCM_CREDENTIALS`: pid and uid, as the receiver's namespaces see them.
    pub credentials: Option<(i32, u32)>,
    /// `SCM_PIDFD`: the sending process itself.
    pub pidfd: Option<OwnedFd>,
}

/// Takes ownership of a descriptor the kernel installed in this process for a message.
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel has just installed `fd` in our table for the message being read
    // (SCM_PIDFD or SCM_RIGHTS, with MSG_CMSG_CLOEXEC); no other code knows of it, so this is
    // its only owner, and it is closed when the OwnedFd drops.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// One non-blocking `recvmsg` into `buf`, with the sender's credentials and pidfd. Any
/// descriptors a peer tries to pass (`SCM_RIGHTS`) are closed at once, so a peer cannot fill
/// the agent's descriptor table.
pub fn recv_with_sender(socket: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    // Room for the credentials and one pidfd only: passed descriptors that do not fit are
    // discarded (and closed) by the kernel.
    let mut cmsg = nix::cmsg_space!(UnixCredentials, RawFd);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut received = Received {
        bytes: msg.bytes,
        ..Received::default()
    };
    for c in msg.cmsgs().map_err(io::Error::from)? {
        match c {
            ControlMessageOwned::ScmCredentials(uc) => {
                received.credentials = Some((uc.pid(), uc.uid()));
            }
            ControlMessageOwned::ScmRights(fds) => {
                for fd in fds {
                    drop(own(fd));
                }
            }
            ControlMessageOwned::Unknown(u)
                if u.cmsg_header.cmsg_level == libc::SOL_SOCKET
                    && u.cmsg_header.cmsg_type == SCM_PIDFD =>
            {
                if let Ok(raw) = <[u8; 4]>::try_from(u.data_bytes.as_slice()) {
                    received.pidfd = Some(own(RawFd::from_ne_bytes(raw)));
                }
            }
            _ => {}
        }
    }
    Ok(received)
}

/// Hands the memory the allocator holds free back to the system (glibc's `malloc_trim`): after
/// a flood of connections the freed buffers would otherwise stay resident.
pub fn trim_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no arguments that
    // point anywhere and is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
