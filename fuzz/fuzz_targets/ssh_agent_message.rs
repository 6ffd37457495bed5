//! SSH agent frames and messages as `nod agent` decodes them from a client's socket: the
//! 256 KiB-capped codec, ssh-agent-lib's request decoder, the purpose of sign requests and
//! `session-bind@openssh.com`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nod_agent::ssh::codec::fuzz_decode(data));
