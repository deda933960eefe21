//! deploy/: the systemd unit passes `systemd-analyze verify` and scores
//! at most 3.0 ("OK") in `systemd-analyze security` (offline: no systemd
//! needs to run here). Skipped where systemd-analyze is missing.

use std::path::Path;
use std::process::Command;

fn analyze(args: &[&str], dir: &Path) -> Option<std::process::Output> {
    Command::new("systemd-analyze").args(args).current_dir(dir).output().ok()
}

#[test]
fn systemd_unit_verifies_and_is_confined() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/p2p-nos@.service")).unwrap();
    let dir = std::env::temp_dir().join(format!("p2p-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // An instance of the template, pointing at the binary just built
    // (verify checks that ExecStart's program exists).
    let name = "p2p-nos@test.service";
    std::fs::write(dir.join(name), unit.replace("/usr/local/bin/p2p-controller", env!("CARGO_BIN_EXE_p2p-controller")))
        .unwrap();
    let Some(verify) = analyze(&["verify", &format!("./{name}")], &dir) else {
        eprintln!("skipped: systemd-analyze not found (apt install systemd)");
        return;
    };
    let err = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && err.trim().is_empty(), "systemd-analyze verify: {err}");
    let sec = analyze(&["security", "--offline=yes", "--no-pager", &format!("./{name}")], &dir).unwrap();
    let out = String::from_utf8_lossy(&sec.stdout);
    let score: f64 = out
        .lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for p2p-nos@test.service: ")?.1.split(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no score: {out}{}", String::from_utf8_lossy(&sec.stderr)));
    eprintln!("systemd-analyze security: {score}");
    assert!(score <= 3.0, "exposure {score} (was 2.5): {out}");
    for line in ["CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN", "NoNewPrivileges=yes", "ProtectSystem=strict"] {
        assert!(unit.contains(line), "{line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kubernetes_manifests_validate_and_carry_a_checked_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let files = ["namespace.yaml", "configmap.yaml", "daemonset.yaml"];
    let v = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(files)
        .current_dir(&dir)
        .output()
        .expect("python3");
    if String::from_utf8_lossy(&v.stderr).contains("No module named kubernetes_validate") {
        eprintln!("skipped: kubernetes-validate not installed (cargo xtask setup installs it from PyPI)");
        return;
    }
    let all = format!("{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    assert!(v.status.success(), "kubernetes-validate --strict: {all}");
    for f in files {
        assert!(all.contains(&format!("{f} passed")), "{f}: {all}");
    }
    let ds = std::fs::read_to_string(dir.join("daemonset.yaml")).unwrap();
    for line in [
        "hostNetwork: true",
        "add: [\"BPF\", \"NET_ADMIN\"]",
        "privileged: false",
        "path: /ready",
        "prometheus.io/port: \"9475\"",
    ] {
        assert!(ds.contains(line), "daemonset.yaml lacks {line}");
    }
    // The ConfigMap's node.toml is a configuration `run` accepts, with the
    // interface the DaemonSet adds on the command line.
    let cm = std::fs::read_to_string(dir.join("configmap.yaml")).unwrap();
    let toml: String = cm
        .lines()
        .skip_while(|l| !l.contains("node.toml: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    assert!(toml.contains("metrics = "), "{toml}");
    let tmp = std::env::temp_dir().join(format!("p2p-k8s-{}.toml", std::process::id()));
    std::fs::write(&tmp, toml).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_p2p-controller"))
        .args(["config", "check", "--json"])
        .arg(&tmp)
        .args(["--iface", "lo"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&tmp);
    assert!(o.status.success(), "config check: {}", String::from_utf8_lossy(&o.stderr));
}
