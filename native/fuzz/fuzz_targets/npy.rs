//! Any .npy file: the reader never panics, and what it reads survives a write and a re-read.
#![no_main]

use colonnade_native::io::{check_parse, Format};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_parse(Format::Npy, data);
});
