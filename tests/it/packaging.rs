//! Packaging checks that need no container engine: the compose file runs tagway with rules/
//! and certs/ mounted and its ports published; the Dockerfile builds with the README's command.

use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn compose_runs_tagway_with_rules_and_certs_mounted_and_ports_published() {
    let compose: Value = serde_saphyr::from_str(&read("docker-compose.yml")).unwrap();
    let svc = &compose["services"]["tagway"];
    assert!(svc.is_object(), "a `tagway` service");
    let context = svc["build"]["context"]
        .as_str()
        .or_else(|| svc["build"].as_str())
        .unwrap();
    assert_eq!(context, ".");
    let volumes: Vec<&str> = svc["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        volumes
            .iter()
            .any(|v| v.starts_with("./rules:/srv/tagway/rules")),
        "{volumes:?}"
    );
    assert!(
        volumes
            .iter()
            .any(|v| v.starts_with("./certs:/srv/tagway/certs")),
        "{volumes:?}"
    );
    let ports: Vec<String> = svc["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(ports.iter().any(|p| p.ends_with(":8080")), "{ports:?}");
    assert!(ports.iter().any(|p| p.ends_with(":8443")), "{ports:?}");
    // Inside the container tagway must listen on all interfaces, or the published ports lead nowhere.
    let env = svc["environment"].as_object().unwrap();
    assert_eq!(env["TAGWAY_LISTEN"], "0.0.0.0:8080");
    assert_eq!(env["TAGWAY_TLS_LISTEN"], "0.0.0.0:8443");
}

#[test]
fn dockerfile_builds_with_the_readme_command_and_runs_unprivileged() {
    let dockerfile = read("Dockerfile");
    let readme = read("README.md");
    let build: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("RUN "))
        .filter(|l| l.contains("cargo build"))
        .collect();
    assert_eq!(build.len(), 1, "one cargo build step: {build:?}");
    assert!(
        readme.contains(build[0].trim()),
        "README documents the Dockerfile's build command `{}`",
        build[0]
    );
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage");
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim().starts_with("USER ") && !l.contains("root")),
        "non-root user"
    );
}
