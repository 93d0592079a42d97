//! `master multiply` on good and bad files: formats, one-line errors, exit codes,
//! and no output left behind.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

struct Run {
    code: Option<i32>,
    stderr: String,
}

/// Runs `master multiply` with one local worker and no network set-up.
fn multiply(a: &Path, b: &Path, c: &Path) -> Run {
    multiply_with(a, b, c, &[])
}

fn multiply_with(a: &Path, b: &Path, c: &Path, extra: &[&str]) -> Run {
    let out = Command::new(MASTER)
        .arg("multiply")
        .arg(a)
        .arg(b)
        .arg("-o")
        .arg(c)
        .args(["--listen", "127.0.0.1:0", "--local-workers", "1"])
        .args(extra)
        .output()
        .unwrap();
    Run { code: out.status.code(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// A bad input: exit 2, one line naming `file` and containing `problem`, and no output.
fn assert_rejected(a: &Path, b: &Path, file: &Path, problem: &str) {
    assert_rejected_with(a, b, file, problem, &[]);
}

fn assert_rejected_with(a: &Path, b: &Path, file: &Path, problem: &str, extra: &[&str]) {
    let dir = temp_dir();
    let c = path(&dir, "c.csv");
    let run = multiply_with(a, b, &c, extra);
    assert_eq!(run.code, Some(2), "exit code; stderr:\n{}", run.stderr);
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{}", run.stderr);
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(errors[0].contains(name) && errors[0].contains(problem), "want {name} and {problem:?} in {:?}", errors[0]);
    assert!(!c.exists(), "no output written");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary files left");
}

#[test]
fn bad_inputs_get_one_line_and_exit_2() {
    let dir = temp_dir();
    let good = path(&dir, "good.csv");
    write_csv(&good, &Dense::random_ints(3, 3, 1));
    let file = |name: &str, bytes: &[u8]| {
        let p = path(&dir, name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let missing = path(&dir, "missing.npy");
    assert_rejected(&missing, &good, &missing, "no such file");
    let txt = file("a.txt", b"1,2\n");
    assert_rejected(&txt, &good, &txt, "unknown extension '.txt'");
    let npy = path(&dir, "whole.npy");
    write_npy(&npy, &Dense::random_ints(3, 3, 2));
    let mut bytes = std::fs::read(&npy).unwrap();
    bytes.truncate(bytes.len() - 5);
    let truncated = file("truncated.npy", &bytes);
    assert_rejected(&truncated, &good, &truncated, "truncated");
    let corrupt = file("corrupt.npy", b"PK\x03\x04 this is a zip file");
    assert_rejected(&corrupt, &good, &corrupt, "not a .npy file");
    let letters = file("letters.csv", b"1,2,3\n4,five,6\n7,8,9\n");
    assert_rejected(&good, &letters, &letters, "row 2, column 2: 'five' is not a number");
    let ragged = file("ragged.csv", b"1,2,3\n4,5\n7,8,9\n");
    assert_rejected(&ragged, &good, &ragged, "row 2 has 2 columns, but row 1 has 3");
    let empty = file("empty.csv", b"");
    assert_rejected(&empty, &good, &empty, "the matrix is empty");
    let a34 = file("a34.csv", b"1,2,3,4\n5,6,7,8\n9,10,11,12\n");
    let b52 = file("b52.csv", b"1,2\n3,4\n5,6\n7,8\n9,10\n");
    assert_rejected(&a34, &b52, &a34, "A is 3x4 but B is 5x2");
    let bad_mtx = file("bad.mtx", b"%%MatrixMarket matrix coordinate real general\n3 3 1\n4 1 1.0\n");
    assert_rejected(&bad_mtx, &good, &bad_mtx, "index '4' is outside 1..=3");
}

#[test]
fn inputs_over_the_memory_limit_are_refused_before_they_are_allocated() {
    let dir = temp_dir();
    let (a, b) = (path(&dir, "a.npy"), path(&dir, "b.npy"));
    write_npy(&a, &Dense::random_ints(40, 40, 3)); // 12.5 KiB of data
    write_npy(&b, &Dense::random_ints(40, 400, 4)); // 125 KiB, and so is C
    // B is read first (the verifier is prepared while A is read).
    assert_rejected_with(&a, &b, &b, "more than the 8.0 KiB memory limit", &["--max-memory", "8K"]);
    // A file within the limit, but the matrix it claims is not.
    let claims = path(&dir, "claims.mtx");
    std::fs::write(&claims, "%%MatrixMarket matrix coordinate real general\n100000 100000 1\n1 1 1\n").unwrap();
    assert_rejected(&claims, &b, &claims, "a dense 100000x100000 matrix needs 74.5 GiB, more than the");
    // A and B fit, but not with C: refused before C is allocated, naming the output.
    assert_rejected_with(&a, &b, Path::new("c.csv"), "C = A·B is 40x400 and needs 125.0 KiB; with A and B (137.5 KiB)", &["--max-memory", "200K"]);
    let c = path(&dir, "c.csv");
    let run = multiply_with(&a, &b, &c, &["--max-memory", "300K"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn a_bad_input_never_replaces_a_good_output() {
    let dir = temp_dir();
    let bad = path(&dir, "bad.csv");
    std::fs::write(&bad, "1,x\n").unwrap();
    let c = path(&dir, "c.csv");
    std::fs::write(&c, "precious\n").unwrap();
    let run = multiply(&bad, &bad, &c);
    assert_eq!(run.code, Some(2));
    assert_eq!(std::fs::read_to_string(&c).unwrap(), "precious\n");
}

#[test]
fn bad_usage_exits_2() {
    let out = Command::new(MASTER).args(["multiply", "a.csv"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(MASTER).args(["multiply", "a.csv", "b.csv", "-o", "c.csv", "--block", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(WORKER).arg("http://example").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a WebSocket URL"));
    for (bin, sub) in [(MASTER, Some("multiply")), (MASTER, Some("demo")), (WORKER, None)] {
        let out = Command::new(bin).args(sub).arg("--help").output().unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

#[test]
fn formats_mix_and_integers_stay_integers() {
    let dir = temp_dir();
    let a = Dense::random_ints(5, 4, 8);
    let b = Dense::random_ints(4, 6, 9);
    let (a_npy, b_mtx) = (path(&dir, "a.npy"), path(&dir, "b.mtx"));
    write_npy(&a_npy, &a);
    let mut mtx = String::from("%%MatrixMarket matrix array integer general\n4 6\n");
    for j in 0..6 {
        for i in 0..4 {
            mtx.push_str(&format!("{}\n", b.at(i, j)));
        }
    }
    std::fs::write(&b_mtx, mtx).unwrap();
    // Float npy times integer mtx: a float result.
    let c_npy = path(&dir, "c.npy");
    assert_eq!(multiply(&a_npy, &b_mtx, &c_npy).code, Some(0));
    assert_eq!(read_npy(&c_npy), ("<f8".to_owned(), naive(&a, &b)));
    // Integer CSV times integer mtx: integers, in .npy and in .csv.
    let a_csv = path(&dir, "a.csv");
    write_csv(&a_csv, &a);
    assert_eq!(multiply(&a_csv, &b_mtx, &c_npy).code, Some(0));
    assert_eq!(read_npy(&c_npy), ("<i8".to_owned(), naive(&a, &b)));
    let c_csv = path(&dir, "c.csv");
    assert_eq!(multiply(&a_csv, &b_mtx, &c_csv).code, Some(0));
    assert!(!std::fs::read_to_string(&c_csv).unwrap().contains('.'), "integers are written as integers");
    assert_eq!(read_csv(&c_csv), naive(&a, &b));
}

/// python3 with numpy; the tests that need it fail, rather than skip, without it.
fn python_with_numpy() -> String {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import numpy"]).output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "this test needs numpy: run `cargo xtask test` (which installs it) or `pip install numpy`"
    );
    python
}

#[test]
fn numpy_files_we_cannot_multiply_are_refused_by_name() {
    let python = python_with_numpy();
    let dir = temp_dir();
    let script = r#"
import sys, numpy as np
d = sys.argv[1]
np.save(f"{d}/points.npy", np.zeros(3, dtype=[('x', '<f8'), ('y', '<f8')]))
np.save(f"{d}/plain.npy", np.ones((3, 3)))
"#;
    assert!(Command::new(&python).args(["-c", script]).arg(dir.path()).status().unwrap().success());
    let (points, plain) = (path(&dir, "points.npy"), path(&dir, "plain.npy"));
    assert_rejected(&points, &plain, &points, "structured dtype (fields x, y) is not supported; save a plain float or integer array");
    // numpy's own reader refuses version 1.1, and so must we.
    let mut bytes = std::fs::read(&plain).unwrap();
    assert_eq!(&bytes[6..8], [1, 0], "numpy writes version 1.0");
    bytes[7] = 1;
    let v11 = path(&dir, "v11.npy");
    std::fs::write(&v11, bytes).unwrap();
    let numpy_says = Command::new(&python).args(["-c", "import sys, numpy as np; np.load(sys.argv[1])"]).arg(&v11).output().unwrap();
    assert!(!numpy_says.status.success(), "numpy refuses version 1.1 too");
    assert_rejected(&plain, &v11, &v11, "unsupported .npy format version 1.1 (numpy writes 1.0, 2.0 and 3.0)");
}

#[test]
fn numpy_reads_what_we_write_and_we_read_what_numpy_writes() {
    let python = python_with_numpy();
    let dir = temp_dir();
    let script = r#"
import sys, numpy as np
d = sys.argv[1]
rng = np.random.default_rng(7)
a = rng.standard_normal((37, 23))
np.save(f"{d}/a_f8_c.npy", a)
np.save(f"{d}/a_f8_f.npy", np.asfortranarray(a))
np.save(f"{d}/a_f8_be.npy", a.astype('>f8'))
b = rng.integers(-50, 50, size=(23, 29))
np.save(f"{d}/b_i4.npy", b.astype(np.int32))
np.save(f"{d}/b_u2_be.npy", (b + 50).astype('>u2'))
np.save(f"{d}/a_f4.npy", a.astype(np.float32))
np.save(f"{d}/b_f4.npy", b.astype(np.float32))
"#;
    let status = Command::new(&python).args(["-c", script]).arg(dir.path()).status().unwrap();
    assert!(status.success());
    let check = r#"
import sys, numpy as np
d, a, b, c, dtype = sys.argv[1:]
A, B, C = np.load(f"{d}/{a}"), np.load(f"{d}/{b}"), np.load(f"{d}/{c}")
assert C.dtype == np.dtype(dtype), (C.dtype, dtype)
ref = A.astype(np.float64) @ B.astype(np.float64)
tol = 1e-4 if dtype == "float32" else 1e-12
assert np.allclose(C, ref, rtol=tol, atol=tol * np.abs(ref).max()), np.abs(C - ref).max()
"#;
    for (a, b, dtype) in [
        ("a_f8_c.npy", "b_i4.npy", "float64"),
        ("a_f8_f.npy", "b_u2_be.npy", "float64"),
        ("a_f8_be.npy", "b_i4.npy", "float64"),
        ("a_f4.npy", "b_f4.npy", "float32"),
    ] {
        let (a_path, b_path) = (path(&dir, a), path(&dir, b));
        let c_path = path(&dir, "c.npy");
        let run = multiply(&a_path, &b_path, &c_path);
        assert_eq!(run.code, Some(0), "{a} x {b}: {}", run.stderr);
        let status = Command::new(&python).args(["-c", check]).arg(dir.path()).args([a, b, "c.npy", dtype]).status().unwrap();
        assert!(status.success(), "numpy disagrees for {a} x {b}");
    }
    integers_come_back_as_int64(&python, &dir);
}

/// Integer inputs from numpy come back as int64 that numpy reads.
fn integers_come_back_as_int64(python: &str, dir: &tempfile::TempDir) {
    let script = r#"
import sys, numpy as np
d = sys.argv[1]
np.save(f"{d}/x.npy", np.arange(12, dtype=np.int16).reshape(3, 4))
np.save(f"{d}/y.npy", np.arange(8, dtype=np.int64).reshape(4, 2) - 3)
"#;
    assert!(Command::new(python).args(["-c", script]).arg(dir.path()).status().unwrap().success());
    let run = multiply(&path(dir, "x.npy"), &path(dir, "y.npy"), &path(dir, "xy.npy"));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let check = r#"
import sys, numpy as np
d = sys.argv[1]
C = np.load(f"{d}/xy.npy")
assert C.dtype == np.int64, C.dtype
assert (C == np.load(f"{d}/x.npy").astype(np.int64) @ np.load(f"{d}/y.npy")).all()
"#;
    assert!(Command::new(python).args(["-c", check]).arg(dir.path()).status().unwrap().success(), "numpy disagrees on integers");
}
