//! The one place that knows the wire encoding: a bincode 2 header, then raw bytes.
//! Swapping bincode for another serde format touches only this file.

use bincode::config::{self, Config};

use crate::protocol::{Frame, Message, MAX_CHUNK};

/// Largest header we decode; bounds what a hostile peer can make us allocate.
pub const MAX_HEADER: usize = 64 * 1024;

/// Largest whole message: a header plus one chunk.
pub const MAX_MESSAGE: usize = MAX_CHUNK + MAX_HEADER;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("undecodable message header: {0}")]
    Header(String),
    #[error("{0} bytes of body on a message that carries none")]
    UnexpectedBody(usize),
}

fn config() -> impl Config {
    config::standard().with_little_endian().with_variable_int_encoding().with_limit::<MAX_HEADER>()
}

/// Encodes a header followed by `body`.
pub fn encode(message: &Message, body: &[u8]) -> Vec<u8> {
    debug_assert!(body.is_empty() || message.has_body());
    let mut out = bincode::serde::encode_to_vec(message, config()).expect("headers always encode");
    out.reserve_exact(body.len());
    out.extend_from_slice(body);
    out
}

/// The bytes of one WebSocket binary message carrying `frame`.
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    encode(&frame.message, &frame.body)
}

/// Decodes untrusted bytes into a header and its body. Never panics, and
/// allocates at most `MAX_HEADER` bytes for the header.
pub fn decode(bytes: &[u8]) -> Result<(Message, &[u8]), CodecError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (message, used): (Message, usize) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| CodecError::Header(e.to_string()))?;
    let body = &bytes[used..];
    if !body.is_empty() && !message.has_body() {
        return Err(CodecError::UnexpectedBody(body.len()));
    }
    Ok((message, body))
}

#[cfg(feature = "fuzzing")]
/// The fuzz target's check (also replayed over its corpus by `cargo test`):
/// decoding any bytes never panics, and what decodes re-encodes to the same message.
pub fn check_decode(bytes: &[u8]) -> bool {
    let Ok((message, body)) = decode(bytes) else { return false };
    let again = encode(&message, body);
    let (message2, body2) = decode(&again).expect("a re-encoded message decodes");
    assert_eq!((&message2, body2), (&message, body), "re-encoding changed the message");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Dtype;
    use crate::protocol::{Token, WorkerKind, PROTOCOL_VERSION};
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let messages = [
            Message::Hello { protocol: PROTOCOL_VERSION, kind: WorkerKind::Browser, threads: 3, slots: 2, name: "tab".into(), token: Token::new("s3cret"), memory: 1 << 30, flops: 20_000_000_000 },
            Message::Heartbeat,
            Message::Job { job: 7, m: 1 << 40, k: 3, n: 4, dtype: Dtype::F32 },
            Message::Evict { job: 7, panels: vec![0, 3, u32::MAX] },
            Message::Accepted { lease: 3, done: 4, total: 5 },
            Message::Release { leases: vec![1, 2, u64::MAX] },
        ];
        for m in messages {
            assert_eq!(decode(&encode(&m, &[])).unwrap(), (m, &[][..]));
        }
        let chunk = Message::ResultChunk { lease: 9, offset: 4096, compute_us: 12 };
        let (m, body) = decode(&encode(&chunk, &[1, 2, 3])).map(|(m, b)| (m, b.to_vec())).unwrap();
        assert_eq!((m, body), (chunk, vec![1, 2, 3]));
    }

    #[test]
    fn hello_keeps_its_version_readable() {
        // Variant 0, then the version as a varint: a future master can always read it.
        let bytes = encode(&Message::Hello { protocol: 1, kind: WorkerKind::Native, threads: 1, slots: 1, name: String::new(), token: Token::default(), memory: 0, flops: 0 }, &[]);
        assert_eq!(&bytes[..2], &[0, 1]);
    }

    #[test]
    fn rejects_hostile_input() {
        assert!(matches!(decode(&[]), Err(CodecError::Header(_))));
        assert!(matches!(decode(&[200]), Err(CodecError::Header(_))));
        // A Release claiming 2^60 leases must not allocate them.
        let mut huge = vec![9u8, 0xfd];
        huge.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode(&huge).is_err());
        // A string longer than the header limit.
        let mut long = vec![2u8, 0xfc];
        long.extend_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(decode(&long).is_err());
        assert!(matches!(decode(&encode(&Message::JobDone { job: 1 }, &[]).into_iter().chain([0]).collect::<Vec<_>>()), Err(CodecError::UnexpectedBody(1))));
        assert!(matches!(decode(&vec![0; MAX_MESSAGE + 1]), Err(CodecError::TooLarge(_))));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
