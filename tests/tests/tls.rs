//! SASL_SSL on a broker of the test's own, whose certificate is signed by a
//! CA the test generates: SCRAM over TLS works with `--ssl-ca-location`,
//! and a certificate from another CA is refused in one clear line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use apps::fake::Generator;
use integration_tests::*;

const KEYSTORE_PASSWORD: &str = "keystore-pw";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>.key`, `<name>.crt`) in `dir`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    dir.join(format!("{name}.crt"))
}

/// The broker's key and certificate for 127.0.0.1 and localhost, signed by
/// CA `ca`, as a PKCS12 keystore.
fn make_broker_keystore(dir: &Path, ca: &str) -> PathBuf {
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "broker.key",
            "-out",
            "broker.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "broker.csr",
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "broker.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-in",
            "broker.crt",
            "-inkey",
            "broker.key",
            "-certfile",
            &format!("{ca}.crt"),
            "-out",
            "broker.p12",
            "-passout",
            &format!("pass:{KEYSTORE_PASSWORD}"),
        ],
    );
    dir.join("broker.p12")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_run_over_sasl_ssl_with_a_test_ca_and_refuse_another_ca() {
    let pki = tempfile::tempdir().unwrap();
    let ca = make_ca(pki.path(), "test-ca");
    let other_ca = make_ca(pki.path(), "other-ca");
    let keystore = make_broker_keystore(pki.path(), "test-ca");

    let cluster = OwnCluster::start_with(
        27_000,
        30_000,
        1,
        vec![
            ("KAFKA_SSL_KEYSTORE", keystore.display().to_string()),
            ("KAFKA_SSL_KEYSTORE_PASSWORD", KEYSTORE_PASSWORD.to_string()),
        ],
    );
    let port = cluster.port;
    let plain = format!("127.0.0.1:{port}");
    let tls = format!("127.0.0.1:{}", port + 3);

    let (user, password) = (unique("tls-user"), format!("Pw-{}", unique("tls")));
    cluster.sh(&["user", &user, &password]);
    let (app, new_users, actions) = (unique("tls"), unique("new_users"), unique("actions"));
    create_topic_at(&plain, &new_users, 1, &[]).await;
    create_topic_at(&plain, &actions, 1, &[]).await;
    let principal = format!("User:{user}");
    for (ops, kind, name) in [
        (&["Read", "Describe"][..], "--topic", new_users.as_str()),
        (&["Write", "Describe"][..], "--topic", actions.as_str()),
        (&["Read"][..], "--group", app.as_str()),
    ] {
        let mut args = vec!["acl", "--add", "--allow-principal", principal.as_str()];
        for op in ops {
            args.extend(["--operation", op]);
        }
        args.extend([kind, name]);
        cluster.sh(&args);
    }
    let team2 = apps::filters::for_team("team-2").unwrap();
    let p = producer_at(&plain);
    let mut g = Generator::new(11);
    let mut flagged = 0;
    for _ in 0..300 {
        let u = g.user();
        flagged += usize::from(team2.matches(&u));
        send(&p, &new_users, None, &serde_json::to_vec(&u).unwrap());
    }
    flush(&p);
    assert!(flagged > 0, "the data flags someone");

    let flagger = |ca: &Path, log: &Path| {
        let state = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(log).unwrap();
        let child = Command::new(workspace_bin("flagger"))
            .args([
                "--team",
                "team-2",
                "--application-id",
                &app,
                "--new-users-topic",
                &new_users,
                "--actions-topic",
                &actions,
            ])
            .args([
                "--bootstrap-servers",
                &tls,
                "--security-protocol",
                "SASL_SSL",
                "--sasl-mechanism",
                "SCRAM-SHA-256",
            ])
            .args([
                "--username",
                &user,
                "--ssl-ca-location",
                &ca.display().to_string(),
            ])
            .args(["--state-dir", &state.path().display().to_string()])
            .env("KAFKA_PASSWORD", &password)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .spawn()
            .expect("flagger");
        (Guard(child), state)
    };

    // The right CA: every flagged user becomes an action.
    let log = log_dir().join(format!("{app}.log"));
    let (mut child, _state) = flagger(&ca, &log);
    let mut count = 0;
    let done = wait_until(Duration::from_secs(90), || {
        count = read_all_with(client_config_at(&plain), &actions, Duration::from_secs(20)).len();
        count >= flagged
    });
    signal_and_wait(&mut child, libc::SIGTERM);
    let log_text = std::fs::read_to_string(&log).unwrap();
    // Another CA: refused, in one line, without the password.
    let bad_log = log_dir().join(format!("{app}-other-ca.log"));
    let (mut bad, _bad_state) = flagger(&other_ca, &bad_log);
    let exited = wait_until(Duration::from_secs(90), || {
        bad.try_wait().ok().flatten().is_some()
    });
    if !exited {
        signal_and_wait(&mut bad, libc::SIGKILL);
    }
    cluster.sh(&["stop"]);

    assert!(
        done,
        "{count} of {flagged} actions over SASL_SSL (log {})",
        log.display()
    );
    assert_eq!(count, flagged, "exactly one action per flagged user");
    assert!(!log_text.contains(&password), "password in the debug log");
    assert!(
        exited,
        "the flagger kept running against an untrusted certificate (log {})",
        bad_log.display()
    );
    let bad_text = std::fs::read_to_string(&bad_log).unwrap();
    let error_lines: Vec<&str> = bad_text
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(error_lines.len(), 1, "one error line: {bad_text}");
    let line = error_lines[0].to_lowercase();
    assert!(
        line.contains("certificate") || line.contains("ssl"),
        "names the TLS problem: {line}"
    );
    assert!(!bad_text.contains(&password), "password in the output");
}
