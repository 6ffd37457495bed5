//! The opened plaintext of the keystore's `ssh_keys.sealed` (both versions), as `nod keys` and
//! the agent decode it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nod_agent::keystore::ssh::fuzz_decode(data));
