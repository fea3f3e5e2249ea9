//! Embeds the shipped rule files (`rules/*.toml`) into the binary, so that `tagway` works with
//! no files at all: `config::load` falls back to these when the rules folder is absent.

use std::{env, fs, path::Path};

fn main() {
    println!("cargo::rerun-if-changed=rules");
    let mut names: Vec<String> = fs::read_dir("rules")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".toml"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut out = String::from("/// Shipped rule files, in name order: (file name, contents).\n");
    out.push_str("pub static EMBEDDED_RULES: &[(&str, &str)] = &[\n");
    let root = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    for n in &names {
        let path = Path::new(&root).join("rules").join(n);
        out.push_str(&format!(
            "    ({n:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest =
        Path::new(&env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("embedded_rules.rs");
    fs::write(dest, out).expect("write embedded_rules.rs");
}
