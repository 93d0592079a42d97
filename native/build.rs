//! Embeds the browser worker (web/pkg, made by `cargo xtask web`) when it has
//! been built, so a released `master` is one self-contained file.

use std::path::Path;

const ASSETS: [&str; 2] = ["colonnade_web.js", "colonnade_web_bg.wasm"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(web_assets)");
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
    let pkg = web.join("pkg");
    if ASSETS.iter().all(|f| pkg.join(f).is_file()) {
        println!("cargo::rustc-cfg=web_assets");
        println!("cargo::rerun-if-changed={}", pkg.display());
    } else {
        // Notice when the assets appear.
        println!("cargo::rerun-if-changed={}", web.display());
    }
}
