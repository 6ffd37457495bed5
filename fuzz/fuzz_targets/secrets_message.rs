//! Request-line decoding of the secrets broker (keychain-auth JSON plus nod's CONTROL lines), as
//! the agent runs it on every line from the secrets socket.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nod_client::proto::Message::decode(data);
});
