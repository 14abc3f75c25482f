//! The HTTP server of a running watchlist on a real broker: `/metrics`
//! during a restore and while processing, `/health`, store queries, and
//! the status page in headless Chromium driven through chromedriver.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use integration_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{json, Value};
use stream_core::http::encode_path;

const TEAM: &str = "team-1";
const STORE: &str = "watchlist-counts";

struct App {
    name: String,
    new_users: String,
    watchlist: String,
    port: u16,
}

impl App {
    async fn new(name: &str) -> App {
        let app = App {
            name: unique(name),
            new_users: unique("new_users"),
            watchlist: unique("watchlist"),
            port: free_port(),
        };
        create_topic(&app.new_users, 2).await;
        // compacted, but with the default segment size nothing is cleaned
        // during the test: the restore reads every record written
        create_topic_with(&app.watchlist, 2, &[("cleanup.policy", "compact")]).await;
        app
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn start(&self, state: &Path, log: &Path) -> Guard {
        let args: Vec<String> = [
            "--team",
            TEAM,
            "--application-id",
            &self.name,
            "--new-users-topic",
            &self.new_users,
            "--watchlist-topic",
            &self.watchlist,
            "--state-dir",
            &state.display().to_string(),
            "--bootstrap-servers",
            &bootstrap(),
            "--http",
            &format!("127.0.0.1:{}", self.port),
            "--lineage",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Guard(spawn_logged("watchlist", &args, log))
    }

    fn feed(&self, count: u64, log: &Path) {
        let args: Vec<String> = [
            "--new-users-topic",
            &self.new_users,
            "--bootstrap-servers",
            &bootstrap(),
            "--count",
            &count.to_string(),
            "--seed",
            "7",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let ok = spawn_logged("fake-users", &args, log)
            .wait()
            .expect("fake-users")
            .success();
        assert!(ok, "fake-users failed (log: {})", log.display());
    }
}

/// High watermark of each partition of `topic`.
fn ends(topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = client_config().create().expect("consumer");
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_show_restore_progress_lag_and_counts_in_metrics_and_queries() {
    let a = App::new("http-metrics").await;
    let logs = log_dir();
    let log = logs.join(format!("{}.log", a.name));

    // A changelog of 1,000,000 records over 50,000 companies, as an earlier
    // run would have left it; the new instance has no local state (a
    // restore long enough for scrapes to see it).
    const RECORDS: usize = 1_000_000;
    const KEYS: usize = 50_000;
    let p = producer();
    let mut restored: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..RECORDS {
        let company = format!("Co {}", i % KEYS);
        let n = (i / KEYS) as i64 + 1;
        let v = json!({ "team": TEAM, "company": company, "flag_count": n }).to_string();
        send(&p, &a.watchlist, Some(company.as_bytes()), v.as_bytes());
        restored.insert(company, n);
    }
    flush(&p);
    let changelog_ends = ends(&a.watchlist, 2);
    assert_eq!(changelog_ends.iter().sum::<i64>(), RECORDS as i64);

    // Input waiting before the app starts: its lag is all of it.
    a.feed(3_000, &logs.join(format!("{}-fake.log", a.name)));
    let input_ends = ends(&a.new_users, 2);
    let expected = team1_counts(&a.new_users);
    let flagged: i64 = expected.values().sum();

    let state = tempfile::tempdir().unwrap();
    let mut app = a.start(state.path(), &log);

    // Scrape until a scrape shows a task restoring.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut during = None;
    let mut health_while_restoring = None;
    while Instant::now() < deadline && during.is_none() {
        if let Some((200, text)) = get(&a.url("/metrics")) {
            let all_known = (0..2).all(|p| {
                let part = p.to_string();
                metric(
                    &text,
                    "streams_restore_end_offset",
                    &[("topic", &a.watchlist), ("partition", &part)],
                )
                .is_some()
                    && metric(
                        &text,
                        "streams_consumer_lag",
                        &[("topic", &a.new_users), ("partition", &part)],
                    )
                    .is_some()
            });
            if all_known && metric_values(&text, "streams_task_restoring").contains(&1.0) {
                health_while_restoring = get(&a.url("/health"));
                during = Some(text);
                break;
            }
            if metric(&text, "streams_ready", &[]) == Some(1.0) {
                break; // restored before any scrape saw it
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let during = during.unwrap_or_else(|| {
        signal_and_wait(&mut app, libc::SIGTERM);
        panic!("no scrape saw the restore (log: {})", log.display())
    });
    for (p, end) in changelog_ends.iter().enumerate() {
        let labels = [
            ("topic", a.watchlist.as_str()),
            ("partition", &p.to_string()),
        ];
        let labels: Vec<(&str, &str)> = labels.to_vec();
        assert_eq!(
            metric(&during, "streams_restore_end_offset", &labels),
            Some(*end as f64),
            "end of changelog partition {p}"
        );
        let pos = metric(&during, "streams_restore_position", &labels).expect("restore position");
        assert!(
            (0.0..=*end as f64).contains(&pos),
            "position {pos} within 0..={end}"
        );
    }
    for (p, end) in input_ends.iter().enumerate() {
        let part = p.to_string();
        // nothing committed yet: the lag is every record waiting
        assert_eq!(
            metric(
                &during,
                "streams_consumer_lag",
                &[("topic", &a.new_users), ("partition", &part)]
            ),
            Some(*end as f64),
            "lag of input partition {p} during the restore:\n{during}"
        );
    }
    let (code, body) = health_while_restoring.expect("health answered");
    let h: Value = serde_json::from_str(&body).expect("health JSON");
    if h["status"] == "restoring" {
        assert_eq!(code, 503, "not ready while restoring");
    }

    // Ready once restored; then every input record processed and committed.
    assert!(
        wait_until(Duration::from_secs(180), || matches!(
            get(&a.url("/health")),
            Some((200, _))
        )),
        "never became ready (log: {})",
        log.display()
    );
    let mut text = String::new();
    let done = wait_until(Duration::from_secs(120), || {
        text = get(&a.url("/metrics")).map(|(_, t)| t).unwrap_or_default();
        metric(&text, "streams_processed_records_total", &[])
            == Some((input_ends.iter().sum::<i64>() + flagged) as f64)
            && metric_values(&text, "streams_consumer_lag")
                .iter()
                .all(|&l| l == 0.0)
    });
    signal_and_wait_if(!done, &mut app);
    assert!(done, "processing did not finish as the test expects: {} input + {flagged} repartition records\n{text}", input_ends.iter().sum::<i64>());
    for (p, end) in input_ends.iter().enumerate() {
        let part = p.to_string();
        assert_eq!(
            metric(
                &text,
                "streams_consumer_end_offset",
                &[("topic", &a.new_users), ("partition", &part)]
            ),
            Some(*end as f64)
        );
    }
    let read: f64 = (0..2)
        .filter_map(|p| {
            metric(
                &text,
                "streams_restore_records_read",
                &[("topic", &a.watchlist), ("partition", &p.to_string())],
            )
        })
        .sum();
    assert_eq!(read, RECORDS as f64, "the restore read the whole changelog");
    assert_eq!(
        metric(&text, "streams_dead_letter_records_total", &[]),
        Some(0.0)
    );

    // Interactive queries: restored keys and counted keys.
    for company in ["Co 0", "Co 17", "Co 49999"] {
        let (code, v) =
            get_json(&a.url(&format!("/stores/{STORE}/{}", company.replace(' ', "%20"))));
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["value"], json!(restored[company]), "{company}: {v}");
    }
    let (company, n) = expected
        .iter()
        .max_by_key(|(_, n)| **n)
        .expect("some company counted");
    let (_, v) = get_json(&a.url(&format!("/stores/{STORE}/{}", encode_path(company))));
    assert_eq!(v["value"], json!(n), "{company}: {v}");
    let (code, v) = get_json(&a.url(&format!("/stores/{STORE}?prefix=Co%20123&limit=5")));
    assert_eq!(code, 200);
    assert_eq!(
        v["local_entries"],
        json!(111),
        "Co 123, Co 1230..1239 and Co 12300..12399: {v}"
    );
    assert_eq!(
        v["entries"].as_array().map(Vec::len),
        Some(5),
        "limit 5: {v}"
    );
    let (code, _) = get_json(&a.url("/stores/no-such-store/x"));
    assert_eq!(code, 404);
    signal_and_wait(&mut app, libc::SIGTERM);
}

fn signal_and_wait_if(cond: bool, app: &mut Guard) {
    if cond {
        signal_and_wait(app, libc::SIGTERM);
    }
}

/// A chromedriver process and one headless Chromium session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    fn start(log: &Path) -> Browser {
        let port = free_port();
        let f = std::fs::File::create(log).expect("driver log");
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .spawn()
            .expect("chromedriver (Debian package chromium-driver) must be installed; .ci/run installs it");
        let base = format!("http://127.0.0.1:{port}");
        assert!(
            wait_until(Duration::from_secs(30), || get(&format!("{base}/status"))
                .is_some()),
            "chromedriver did not start"
        );
        let caps = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1600"] } } } });
        let r: Value = ureq::post(&format!("{base}/session"))
            .send_json(caps)
            .expect("new WebDriver session")
            .into_json()
            .expect("session JSON");
        let session = r["value"]["sessionId"]
            .as_str()
            .expect("session id")
            .to_string();
        Browser {
            driver,
            base,
            session,
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let r: Value = ureq::post(&url)
            .send_json(body)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .into_json()
            .expect("JSON");
        r["value"].clone()
    }

    fn script(&self, js: &str) -> Value {
        self.post("/execute/sync", json!({ "script": js, "args": [] }))
    }

    fn screenshot(&self, to: &Path) {
        let url = format!("{}/session/{}/screenshot", self.base, self.session);
        let r: Value = ureq::get(&url)
            .call()
            .expect("screenshot")
            .into_json()
            .expect("JSON");
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["value"].as_str().expect("base64 PNG"))
            .expect("PNG bytes");
        std::fs::write(to, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_show_the_topology_and_the_live_watchlist_in_a_browser() {
    let a = App::new("http-page").await;
    let logs = log_dir();
    let log = logs.join(format!("{}.log", a.name));
    a.feed(6_000, &logs.join(format!("{}-fake.log", a.name)));
    let expected = team1_counts(&a.new_users);
    let flagged: i64 = expected.values().sum();
    let total = ends(&a.new_users, 2).iter().sum::<i64>() + flagged;
    let state = tempfile::tempdir().unwrap();
    let mut app = a.start(state.path(), &log);
    let processed = wait_until(Duration::from_secs(120), || {
        get(&a.url("/metrics"))
            .and_then(|(_, t)| metric(&t, "streams_processed_records_total", &[]))
            == Some(total as f64)
    });
    if !processed {
        signal_and_wait(&mut app, libc::SIGTERM);
        panic!(
            "the watchlist did not process {total} records (log: {})",
            log.display()
        );
    }

    let browser = Browser::start(&logs.join(format!("{}-chromedriver.log", a.name)));
    browser.post("/url", json!({ "url": a.url("/") }));
    let mut page = Value::Null;
    let rendered = wait_until(Duration::from_secs(30), || {
        page = browser.script(
            "const rows = [...document.querySelectorAll('section.view tbody tr')];
             return { loaded: document.body.dataset.loaded === '1',
                      svgText: (document.querySelector('#topology svg') || {}).textContent || '',
                      state: document.getElementById('state').textContent,
                      rows: rows.map(r => ({ key: r.dataset.key, hot: r.classList.contains('hot'),
                                             value: r.querySelector('td.value').textContent })) };",
        );
        page["loaded"] == json!(true)
            && page["rows"].as_array().is_some_and(|r| !r.is_empty())
            && !page["svgText"].as_str().unwrap_or("").is_empty()
    });
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png");
    browser.screenshot(&shot);
    signal_and_wait_if(!rendered, &mut app);
    assert!(
        rendered,
        "the page never showed the topology and rows: {page}"
    );

    let svg = page["svgText"].as_str().unwrap();
    assert!(
        svg.contains("count-1") && svg.contains(&a.new_users) && svg.contains(STORE),
        "diagram: {svg}"
    );
    assert_eq!(page["state"], json!("ready"));
    let top = &page["rows"][0];
    let company = top["key"].as_str().expect("row key");
    let shown: i64 = top["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("numeric count");
    let (code, stored) = get_json(&a.url(&format!("/stores/{STORE}/{}", encode_path(company))));
    assert_eq!(code, 200);
    assert_eq!(
        stored["value"],
        json!(shown),
        "page row {company}={shown} vs store {stored}"
    );
    assert_eq!(
        expected.get(company),
        Some(&shown),
        "the test's own recount of {company}"
    );
    assert_eq!(
        top["hot"],
        json!(shown >= 3),
        "rows at or over the threshold are highlighted"
    );
    // A click on the row shows the registrations behind its count.
    browser.script("document.querySelector('section.view tbody tr').click(); return null;");
    let mut lineage = Value::Null;
    let want_rows = shown.min(5) as usize;
    let shown_lineage = wait_until(Duration::from_secs(20), || {
        lineage = browser.script(
            "return { hidden: document.getElementById('lineage-box').hidden,
                      title: document.getElementById('lineage-title').textContent,
                      topics: [...document.querySelectorAll('#lineage tbody tr td:first-child')].map(t => t.textContent) };",
        );
        lineage["hidden"] == json!(false)
            && lineage["topics"]
                .as_array()
                .is_some_and(|t| t.len() == want_rows)
    });
    assert!(
        shown_lineage,
        "lineage of {company} ({shown} flagged) on the page: {lineage}"
    );
    assert!(
        lineage["title"].as_str().unwrap_or("").contains(company),
        "{lineage}"
    );
    assert!(
        lineage["topics"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t == &json!(a.new_users)),
        "{lineage}"
    );
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "screenshot saved at {}",
        shot.display()
    );
    drop(browser);
    signal_and_wait(&mut app, libc::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_name_the_instance_that_owns_a_key_it_does_not_hold() {
    let a = App::new("http-owner").await;
    let logs = log_dir();
    a.feed(4_000, &logs.join(format!("{}-fake.log", a.name)));
    let expected = team1_counts(&a.new_users);
    let total = ends(&a.new_users, 2).iter().sum::<i64>() + expected.values().sum::<i64>();
    let b = App {
        name: a.name.clone(),
        new_users: a.new_users.clone(),
        watchlist: a.watchlist.clone(),
        port: free_port(),
    };
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut first = a.start(sa.path(), &logs.join(format!("{}-a.log", a.name)));
    let mut second = b.start(sb.path(), &logs.join(format!("{}-b.log", a.name)));
    let processed = |app: &App| {
        get(&app.url("/metrics"))
            .and_then(|(_, t)| metric(&t, "streams_processed_records_total", &[]))
            .unwrap_or(0.0)
    };
    // Together they processed everything, and both are ready.
    let ready = |app: &App| matches!(get(&app.url("/health")), Some((200, _)));
    let settled = wait_until(Duration::from_secs(120), || {
        ready(&a) && ready(&b) && processed(&a) + processed(&b) >= total as f64
    });
    if !settled {
        signal_and_wait(&mut first, libc::SIGTERM);
        signal_and_wait(&mut second, libc::SIGTERM);
        panic!("the two instances did not finish {total} records");
    }
    // Ask both instances about each company: one holds it, the other names
    // the holder, whose URL answers. (Retried while a rebalance settles.)
    let mut remote_seen = 0;
    for (company, n) in expected.iter().take(40) {
        let mut last = Value::Null;
        let answered = wait_until(Duration::from_secs(30), || {
            let path = format!("/stores/{STORE}/{}", encode_path(company));
            let (ca, va) = get_json(&a.url(&path));
            let (cb, vb) = get_json(&b.url(&path));
            last = json!({ "a": va, "b": vb });
            let (holder, other, other_code) =
                match (va["local"] == json!(true), vb["local"] == json!(true)) {
                    (true, false) if ca == 200 => ((&a, &va), &vb, cb),
                    (false, true) if cb == 200 => ((&b, &vb), &va, ca),
                    _ => return false,
                };
            if holder.1["value"] != json!(n) || other_code != 404 {
                return false;
            }
            if other["owner"]["server"] != json!(format!("127.0.0.1:{}", holder.0.port)) {
                return false;
            }
            let url = other["owner"]["url"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let (code, there) = get_json(&url);
            if code == 200 && there["value"] == json!(n) {
                remote_seen += 1;
                return true;
            }
            false
        });
        assert!(answered, "{company} (count {n}): {last}");
    }
    signal_and_wait(&mut first, libc::SIGTERM);
    signal_and_wait(&mut second, libc::SIGTERM);
    assert!(
        remote_seen > 0,
        "some of 40 companies live on the other instance"
    );
}
