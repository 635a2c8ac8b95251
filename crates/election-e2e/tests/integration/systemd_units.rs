//! The systemd units the README tells authorities to install
//! (`docs/systemd/*.service`) load: `systemd-analyze verify` reads each as
//! systemd would and names any unknown directive, bad value or missing
//! section. The binaries they start are stood in for by `/bin/true` under
//! the units' own paths (the check needs an executable there; what runs is
//! tested everywhere else).

use std::path::Path;
use std::process::Command;

#[test]
fn the_shipped_systemd_units_load() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/systemd");
    let dir = std::env::temp_dir().join(format!("election-units-{}", std::process::id()));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let mut units = Vec::new();
    for name in ["election-ingest", "election-query", "election-reprocessor"] {
        let text = std::fs::read_to_string(docs.join(format!("{name}.service")))
            .unwrap_or_else(|error| panic!("docs/systemd/{name}.service: {error}"));
        let path = format!("/usr/local/bin/{name}");
        assert!(
            text.contains(&format!("ExecStart={path}")),
            "{name}: {text}"
        );
        let stand_in = bin.join(name);
        let _ = std::fs::remove_file(&stand_in);
        std::os::unix::fs::symlink("/bin/true", &stand_in).unwrap();
        let unit = dir.join(format!("{name}.service"));
        std::fs::write(&unit, text.replace(&path, stand_in.to_str().unwrap())).unwrap();
        units.push(unit);
    }
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .expect("running systemd-analyze (Debian package systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify complained:\n{said}"
    );
}
