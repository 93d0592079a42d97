//! Any bytes from a peer: decoding never panics, and what decodes re-encodes the same.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    colonnade_core::codec::check_decode(data);
});
