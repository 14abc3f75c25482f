//! SCRAM on the real broker: SHA-512, one clear line per missing permission,
//! and passwords that never reach a log line or an error.

use std::process::{Command, Output};
use std::time::Duration;

use apps::fake::Generator;
use integration_tests::*;

struct Principal {
    user: String,
    password: String,
}

fn new_user() -> Principal {
    let p = Principal {
        user: unique("user"),
        password: format!("Pw-{}", unique("s3cret")),
    };
    kafka_sh(&["user", &p.user, &p.password]);
    p
}

fn allow(p: &Principal, ops: &[&str], resource: &str, name: &str) {
    let principal = format!("User:{}", p.user);
    let mut args = vec!["acl", "--add", "--allow-principal", principal.as_str()];
    for op in ops {
        args.extend(["--operation", op]);
    }
    args.extend([resource, name]);
    kafka_sh(&args);
}

/// Runs `flagger` as `p` with SCRAM `mechanism` until it exits or `secs` pass.
fn flagger(
    p: &Principal,
    mechanism: &str,
    app: &str,
    new_users: &str,
    actions: &str,
    password: &str,
    secs: u64,
) -> Output {
    let state = tempfile::tempdir().unwrap();
    Command::new("timeout")
        .args(["-s", "TERM", &secs.to_string()])
        .arg(workspace_bin("flagger"))
        .args([
            "--team",
            "team-2",
            "--application-id",
            app,
            "--new-users-topic",
            new_users,
            "--actions-topic",
            actions,
        ])
        .args([
            "--bootstrap-servers",
            &sasl_bootstrap(),
            "--security-protocol",
            "SASL_PLAINTEXT",
        ])
        .args([
            "--sasl-mechanism",
            mechanism,
            "--username",
            &p.user,
            "--state-dir",
            &state.path().display().to_string(),
        ])
        .env("KAFKA_PASSWORD", password)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap()
}

async fn topics() -> (String, String, String) {
    let (app, new_users, actions) = (unique("sec"), unique("new_users"), unique("actions"));
    create_topic(&new_users, 1).await;
    create_topic(&actions, 1).await;
    let p = producer();
    let mut g = Generator::new(9);
    for _ in 0..200 {
        send(
            &p,
            &new_users,
            None,
            &serde_json::to_vec(&g.user()).unwrap(),
        );
    }
    flush(&p);
    (app, new_users, actions)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_run_with_scram_sha_512_and_write_actions() {
    let (app, new_users, actions) = topics().await;
    let p = new_user();
    allow(&p, &["Read", "Describe"], "--topic", &new_users);
    allow(&p, &["Write", "Describe"], "--topic", &actions);
    allow(&p, &["Read"], "--group", &app);
    let out = flagger(
        &p,
        "SCRAM-SHA-512",
        &app,
        &new_users,
        &actions,
        &p.password,
        12,
    );
    let written = read_all(&actions, Duration::from_secs(20));
    assert!(!written.is_empty(), "actions were written: {}", text(&out));
    for r in &written {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(v["team"], "team-2");
        assert_eq!(v["reason"], "AMEX_CARD");
        assert!(v["customer"].as_str().is_some_and(|c| !c.is_empty()));
    }
    assert!(
        !text(&out).contains(&p.password),
        "password in the debug log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_name_the_missing_permission_for_each_operation() {
    let (app, new_users, actions) = topics().await;

    // No Read on the source topic (Describe only).
    let p = new_user();
    allow(&p, &["Describe"], "--topic", &new_users);
    allow(&p, &["Write", "Describe"], "--topic", &actions);
    allow(&p, &["Read"], "--group", &app);
    let out = flagger(
        &p,
        "SCRAM-SHA-256",
        &app,
        &new_users,
        &actions,
        &p.password,
        60,
    );
    let t = text(&out);
    assert!(
        t.contains("error: not authorized to Read") && t.contains(&new_users),
        "{t}"
    );

    // No Read on the consumer group.
    let p = new_user();
    allow(&p, &["Read", "Describe"], "--topic", &new_users);
    allow(&p, &["Write", "Describe"], "--topic", &actions);
    let out = flagger(
        &p,
        "SCRAM-SHA-256",
        &app,
        &new_users,
        &actions,
        &p.password,
        60,
    );
    let t = text(&out);
    assert!(
        t.contains("error: not authorized to Read consumer group") && t.contains(&app),
        "{t}"
    );

    // No Write on the sink topic (Describe only).
    let p = new_user();
    allow(&p, &["Read", "Describe"], "--topic", &new_users);
    allow(&p, &["Describe"], "--topic", &actions);
    allow(&p, &["Read"], "--group", &app);
    let out = flagger(
        &p,
        "SCRAM-SHA-256",
        &app,
        &new_users,
        &actions,
        &p.password,
        60,
    );
    let t = text(&out);
    assert!(
        t.contains("error: not authorized to Write") && t.contains(&actions),
        "{t}"
    );
    assert!(!t.contains(&p.password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_report_a_wrong_password_in_one_line_without_the_password() {
    let (app, new_users, actions) = topics().await;
    let p = new_user();
    let wrong = format!("{}-wrong", p.password);
    let out = flagger(&p, "SCRAM-SHA-256", &app, &new_users, &actions, &wrong, 60);
    let t = text(&out);
    assert!(!out.status.success());
    let errors: Vec<&str> = t.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{t}");
    assert!(
        errors[0].contains("authentication failed") && errors[0].contains(&p.user),
        "{t}"
    );
    assert!(
        !t.contains(&wrong) && !t.contains(&p.password),
        "a password appears in the output"
    );
    assert!(!t.contains("panicked"), "{t}");
}
