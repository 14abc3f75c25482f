//! The HTTP server off loopback: without a token it refuses to start, in
//! one line; with one, a request without it gets 401 and never a store
//! value. (No broker needed: the server answers from the instance handle.)

use std::net::SocketAddr;

use integration_tests::*;
use stream_core::http::Server;
use stream_core::runtime::{KafkaStreams, Secret, StreamsConfig};
use stream_dsl::prelude::*;

fn instance(token: Option<&str>, insecure: bool) -> KafkaStreams {
    let b = StreamsBuilder::new();
    b.source("in")
        .group_by_key()
        .count(Materialized::as_store("counts"))
        .to_topic("out");
    let mut cfg = StreamsConfig::new(&unique("http-auth"), "127.0.0.1:1");
    cfg.http_token = token.map(Secret::new);
    cfg.http_insecure = insecure;
    KafkaStreams::new(b.build().unwrap(), cfg).unwrap()
}

fn any_address() -> SocketAddr {
    format!("0.0.0.0:{}", free_port()).parse().unwrap()
}

#[tokio::test]
async fn should_refuse_to_serve_other_machines_without_a_token() {
    let err = match Server::bind(any_address(), instance(None, false).handle(), Vec::new()).await {
        Ok(_) => panic!("bound 0.0.0.0 without a token"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("not on loopback") && err.contains("--http-token"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    // Loopback needs no token; --http-insecure opts out on purpose.
    let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    assert!(
        Server::bind(local, instance(None, false).handle(), Vec::new())
            .await
            .is_ok()
    );
    assert!(
        Server::bind(any_address(), instance(None, true).handle(), Vec::new())
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn should_answer_401_without_the_token_and_never_a_store_value() {
    let addr = any_address();
    let server = Server::bind(addr, instance(Some("s3cret"), false).handle(), Vec::new())
        .await
        .unwrap();
    let task = server.spawn();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", addr.port());
    let call = |path: String, token: Option<&'static str>| {
        tokio::task::spawn_blocking(move || {
            let agent = ureq::AgentBuilder::new().build();
            let mut req = agent.get(&path);
            if let Some(t) = token {
                req = req.set("Authorization", &format!("Bearer {t}"));
            }
            match req.call() {
                Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
                Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
                Err(e) => panic!("{e}"),
            }
        })
    };
    for path in [
        "/stores/counts/k",
        "/stores/counts",
        "/metrics",
        "/topology",
        "/",
    ] {
        let (code, body) = call(url(path), None).await.unwrap();
        assert_eq!(code, 401, "{path} without a token: {body}");
        assert!(!body.contains("\"value\""), "{path}: {body}");
        let (code, _) = call(url(path), Some("wrong")).await.unwrap();
        assert_eq!(code, 401, "{path} with a wrong token");
    }
    let (code, body) = call(url("/topology"), Some("s3cret")).await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("counts"), "{body}");
    task.abort();
}
