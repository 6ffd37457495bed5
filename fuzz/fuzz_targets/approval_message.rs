//! Frame + message decoding of the approval protocol, as the agent and the helper run it on
//! bytes from the socket.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nod_proto::fuzz_decode(data));
