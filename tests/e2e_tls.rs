//! The master over https and wss, with certificates from rcgen and from the
//! openssl command line: a private CA, and self-signed ones.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(120);

/// Writes a private CA (ca.pem) and a certificate it signed for localhost and
/// 127.0.0.1 (cert.pem, key.pem) into `dir`.
fn make_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Colonnade test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

fn wss_worker(name: &str, addr: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(WORKER);
    cmd.arg(format!("wss://{addr}/ws")).args(["--threads", "1", "--name", name]).args(extra).env("RUST_LOG", "debug");
    Proc::spawn(name, &mut cmd)
}

#[test]
fn a_job_runs_over_wss_and_only_trusting_workers_get_in() {
    let _serial = serial();
    let dir = temp_dir();
    make_certificates(dir.path());
    let (a_path, c_path) = (path(&dir, "a.csv"), path(&dir, "c.csv"));
    let a = Dense::random_ints(40, 40, 41);
    write_csv(&a_path, &a);
    let (cert, key, ca) = (path(&dir, "cert.pem"), path(&dir, "key.pem"), path(&dir, "ca.pem"));
    let tls = ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
    let (mut master, addr) = start_master(&a_path, &a_path, &c_path, &[&tls[..], &["--block", "5"]].concat());
    master.wait_for("the wss URL", LONG, |l| l.contains(&format!("worker wss://{addr}/ws")));

    let stranger = wss_worker("stranger", &addr, &[]);
    let line = stranger.wait_for("the TLS failure", LONG, |l| l.contains("TLS with the master failed"));
    assert!(line.contains("UnknownIssuer") && line.contains("--ca FILE"), "{line}");
    let plain = start_worker("plain", &addr, &[]); // ws:// to a TLS port
    plain.wait_for("a failed plain connection", LONG, |l| l.contains("cannot reach the master"));
    drop((stranger, plain));

    let trusting = wss_worker("trusting", &addr, &["--ca", ca.to_str().unwrap()]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_csv(&c_path), naive(&a, &a));
    assert_eq!(worker_tiles(&c_path), vec![("native".to_owned(), 8)], "only the trusting worker joined");
    assert!(master.output().contains("TLS handshake failed"), "{}", master.output());
    drop(trusting);
}

#[test]
fn local_workers_trust_their_masters_own_certificate() {
    let _serial = serial();
    let dir = temp_dir();
    make_certificates(dir.path());
    let (a_path, c_path) = (path(&dir, "a.csv"), path(&dir, "c.csv"));
    let a = Dense::random_ints(12, 12, 42);
    write_csv(&a_path, &a);
    let (cert, key) = (path(&dir, "cert.pem"), path(&dir, "key.pem"));
    let args = ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--local-workers", "1"];
    let (mut master, _) = start_master(&a_path, &a_path, &c_path, &args);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_csv(&c_path), naive(&a, &a));
}

#[test]
fn a_self_signed_certificate_works_when_the_worker_is_given_it() {
    let _serial = serial();
    let dir = temp_dir();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap().self_signed(&key).unwrap();
    let (cert_path, key_path) = (path(&dir, "self.pem"), path(&dir, "self-key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let (a_path, c_path) = (path(&dir, "a.csv"), path(&dir, "c.csv"));
    let a = Dense::random_ints(20, 20, 43);
    write_csv(&a_path, &a);
    let tls = ["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap(), "--block", "5"];
    let (mut master, addr) = start_master(&a_path, &a_path, &c_path, &tls);
    let _worker = wss_worker("w", &addr, &["--ca", cert_path.to_str().unwrap()]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_csv(&c_path), naive(&a, &a));
}

#[test]
fn a_tls_connection_that_says_nothing_after_its_handshake_is_dropped() {
    use std::io::Read;
    let _serial = serial();
    let dir = temp_dir();
    make_certificates(dir.path());
    let (a_path, c_path) = (path(&dir, "a.csv"), path(&dir, "c.csv"));
    write_csv(&a_path, &Dense::random_ints(4, 4, 44));
    let (cert, key, ca) = (path(&dir, "cert.pem"), path(&dir, "key.pem"), path(&dir, "ca.pem"));
    let args = ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--handshake-timeout", "0.5"];
    let (master, addr) = start_master(&a_path, &a_path, &c_path, &args);
    let config = colonnade_native::tls::client_config(Some(&ca)).unwrap();
    let mut conn = rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).expect("the handshake completes");
    }
    let start = std::time::Instant::now();
    let _ = rustls::Stream::new(&mut conn, &mut sock).read_to_end(&mut Vec::new()); // returns when the master hangs up
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(8), "still open after {waited:?}");
    master.wait_for("the drop logged", LONG, |l| l.contains("said nothing within"));
}

/// Waits for `worker`'s TLS failure and checks its hint blames `ca`, not a missing --ca.
fn assert_refused_naming(worker: &Proc, ca: &Path) {
    let line = worker.wait_for("the TLS failure", LONG, |l| l.contains("TLS with the master failed"));
    let blame = format!("the certificate in {} is neither the master's certificate nor the CA that signed it", ca.display());
    assert!(line.contains(&blame) && !line.contains("--ca FILE"), "{line}");
}

#[test]
fn an_openssl_self_signed_certificate_is_trusted_when_given_as_the_ca() {
    let _serial = serial();
    let dir = temp_dir();
    // CA:TRUE, as openssl makes it: webpki alone refuses it as CaUsedAsEndEntity.
    let (cert, key) = openssl::self_signed(dir.path(), "cert");
    let (other, _) = openssl::self_signed(dir.path(), "other");
    let (a_path, c_path) = (path(&dir, "a.csv"), path(&dir, "c.csv"));
    let a = Dense::random_ints(30, 30, 45);
    write_csv(&a_path, &a);
    let tls = ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--block", "5"];
    let (mut master, addr) = start_master(&a_path, &a_path, &c_path, &tls);
    let stranger = wss_worker("stranger", &addr, &["--ca", other.to_str().unwrap()]);
    assert_refused_naming(&stranger, &other);
    drop(stranger);
    let _worker = wss_worker("w", &addr, &["--ca", cert.to_str().unwrap()]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_csv(&c_path), naive(&a, &a));
    assert_eq!(worker_tiles(&c_path), vec![("native".to_owned(), 6)], "only the pinning worker joined");
}

#[test]
fn an_openssl_ca_vouches_for_the_leaf_it_signed_by_name() {
    let _serial = serial();
    let dir = temp_dir();
    let (ca, leaf, key) = openssl::ca_and_leaf(dir.path());
    let (other, _) = openssl::self_signed(dir.path(), "other");
    let (a_path, c_path) = (path(&dir, "a.csv"), path(&dir, "c.csv"));
    let a = Dense::random_ints(30, 30, 46);
    write_csv(&a_path, &a);
    let tls = ["--tls-cert", leaf.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--block", "5"];
    let (mut master, addr) = start_master(&a_path, &a_path, &c_path, &tls);
    let stranger = wss_worker("stranger", &addr, &["--ca", other.to_str().unwrap()]);
    assert_refused_naming(&stranger, &other);
    drop(stranger);
    // Through the CA, names are still checked: the leaf is not for this one.
    let config = colonnade_native::tls::client_config(Some(&ca)).unwrap();
    let mut conn = rustls::ClientConnection::new(config, "elsewhere.invalid".try_into().unwrap()).unwrap();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let refused = loop {
        match conn.complete_io(&mut sock) {
            Ok(_) if conn.is_handshaking() => {}
            Ok(_) => panic!("a leaf for localhost passed as elsewhere.invalid"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(refused.contains("not valid for name"), "{refused}");
    let _worker = wss_worker("w", &addr, &["--ca", ca.to_str().unwrap()]);
    assert!(master.wait_exit(LONG).success(), "{}", master.output());
    assert_eq!(read_csv(&c_path), naive(&a, &a));
    assert_eq!(worker_tiles(&c_path), vec![("native".to_owned(), 6)], "only the trusting worker joined");
}
