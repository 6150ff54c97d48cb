//! Fuzzes `Entry::decode` (the L2 value format): it must never panic, and
//! whatever decodes must re-encode to the very same bytes (the encoding is
//! canonical) and decode again.
//!
//! Run with `cargo +nightly fuzz run decode_entry` from the crate's root.
//!
//! Values read back from L2 go through a stricter, crate-private decoder
//! (`Entry::decode_stored`: the body cap checked before decompressing,
//! status, hop-by-hop fields, `Content-Length`, timeline bounds, the key
//! looked up). It shares this decoder's code, and the crate's
//! `decode_survives_random_and_mutated_inputs` unit test runs it on every
//! input it generates: it must never panic and never accept what this
//! target's decoder refuses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_tiered_cache::Entry;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Entry::decode(data) {
        let enc = e.encode();
        assert_eq!(&enc[..], data, "a decoded value re-encodes to itself");
        let again = Entry::decode(&enc).expect("re-encode decodes");
        assert_eq!(enc, again.encode());
    }
});
