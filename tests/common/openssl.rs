//! Certificates made by the `openssl` command line, the way people make them
//! (rcgen's differ: its self-signed certificates are not marked CA:TRUE).

use std::path::{Path, PathBuf};
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is installed (apt-get install openssl)");
    assert!(out.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A self-signed certificate for localhost and 127.0.0.1, made by the usual
/// one-liner, as `<stem>.pem` and `<stem>-key.pem` in `dir`; returns (cert, key).
pub fn self_signed(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (format!("{stem}.pem"), format!("{stem}-key.pem"));
    let subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"];
    openssl(dir, &[&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &cert, "-days", "365"][..], &subject].concat());
    (dir.join(cert), dir.join(key))
}

/// A private CA (ca.pem, ca.key) and a leaf it signed for localhost and
/// 127.0.0.1 (leaf.pem, leaf-key.pem); returns (ca, leaf, leaf key).
pub fn ca_and_leaf(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    openssl(dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=TestCA", "-days", "365"]);
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf-key.pem", "-out", "leaf.csr", "-subj", "/CN=localhost"]);
    std::fs::write(dir.join("leaf.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    let sign = ["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem", "-days", "30"];
    openssl(dir, &[&sign[..], &["-extfile", "leaf.ext"]].concat());
    (dir.join("ca.pem"), dir.join("leaf.pem"), dir.join("leaf-key.pem"))
}

/// Base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo, as
/// Chromium's --ignore-certificate-errors-spki-list wants it.
pub fn spki_sha256_base64(cert: &Path) -> String {
    let script = "openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64";
    let out = Command::new("sh").args(["-c", script, "sh"]).arg(cert).output().unwrap();
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // A failed step upstream leaves a hash of nothing, or nothing at all.
    assert!(out.status.success() && hash.len() == 44 && hash != "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "SPKI hash of {}: {hash:?}", cert.display());
    hash
}
