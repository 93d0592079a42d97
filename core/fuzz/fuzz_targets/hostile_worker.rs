//! A worker that says anything after a valid Hello: the scheduler never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    colonnade_core::scheduler::fuzz::check_hostile_worker(data);
});
