//! Replays every committed fuzz corpus through the same check its fuzz target
//! runs, so CI exercises them on every run without building the fuzzers.
//! (Here, not in core, because reading the corpus is IO.)

use std::path::Path;

use colonnade_core::codec::check_decode;
use colonnade_core::scheduler::fuzz::check_hostile_worker;
use colonnade_native::io::{check_parse, Format};

/// The inputs in `<crate>/fuzz/corpus/<target>`.
fn corpus(krate: &str, target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(krate).join("fuzz/corpus").join(target);
    std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect()
}

#[test]
fn the_decode_corpus_replays_cleanly() {
    let inputs = corpus("core", "decode");
    let decoded = inputs.iter().filter(|bytes| check_decode(bytes)).count();
    assert!(inputs.len() >= 20, "only {} inputs", inputs.len());
    assert!(decoded > 0 && decoded < inputs.len(), "the corpus covers both good and bad messages: {decoded} of {}", inputs.len());
}

#[test]
fn the_hostile_worker_corpus_replays_cleanly() {
    let inputs = corpus("core", "hostile_worker");
    let outcomes: Vec<_> = inputs.iter().map(|bytes| check_hostile_worker(bytes)).collect();
    assert!(inputs.len() >= 20, "only {} inputs", inputs.len());
    assert!(outcomes.iter().any(|&(_, cut)| cut) && outcomes.iter().any(|&(n, cut)| n > 0 && !cut), "both rule-breakers and survivors: {outcomes:?}");
}

#[test]
fn the_reader_corpora_replay_cleanly() {
    for (name, format) in [("npy", Format::Npy), ("csv", Format::Csv), ("mtx", Format::Mtx)] {
        let inputs = corpus("native", name);
        let parsed = inputs.iter().filter(|bytes| check_parse(format, bytes)).count();
        assert!(inputs.len() >= 10, "{name}: only {} inputs", inputs.len());
        assert!(parsed > 0 && parsed < inputs.len(), "{name}: the corpus covers good and bad files: {parsed} of {}", inputs.len());
    }
}
