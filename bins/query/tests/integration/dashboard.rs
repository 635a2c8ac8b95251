//! The dashboard in a real browser: Debian's headless Chromium, driven over
//! the Chrome DevTools Protocol (a websocket) so the test can read the live
//! page as it changes. It shows the seed's totals, updates within two seconds
//! of a new report without reloading (from the stream's deltas, on a phone
//! too), comes back by itself when the service restarts, and leaves
//! screenshots in `target/artifacts/` (`dashboard.png`,
//! `dashboard-mobile.png`, `dashboard-phone.png`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{SEED, Stack};

/// Where Debian puts it (`apt-get install chromium`; `.ci/run` does).
const CHROMIUM: &str = "chromium";

/// A headless Chromium of this test, killed and cleaned up on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
    devtools_port: u16,
}

impl Browser {
    fn launch(url: &str, width: u32, height: u32) -> Browser {
        // One profile per browser: two Chromiums sharing a profile hand
        // their pages to one process, and the other never shows its page.
        static LAUNCHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "election-query-chromium-{}-{}",
            std::process::id(),
            LAUNCHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        // Chromium also makes a directory in the temporary directory for its
        // singleton socket, which a killed browser leaves behind: inside the
        // profile it goes with it.
        let temporary = profile.join("tmp");
        std::fs::create_dir_all(&temporary).unwrap();
        let child = Command::new(CHROMIUM)
            .env("TMPDIR", &temporary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "--mute-audio",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.display()),
                url,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {CHROMIUM} ({error}): the dashboard test needs Debian's \
                     Chromium; install it with `apt-get install -y chromium` (.ci/run does)"
                )
            });
        // Chromium writes the port it chose to DevToolsActivePort.
        let active = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let devtools_port = loop {
            if let Some(port) = std::fs::read_to_string(&active)
                .ok()
                .and_then(|text| text.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "Chromium did not open its DevTools port within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Browser {
            child,
            profile,
            devtools_port,
        }
    }

    /// The DevTools websocket of the page showing `url`.
    async fn page(&self, url: &str) -> String {
        let list = format!("http://127.0.0.1:{}/json/list", self.devtools_port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = reqwest::get(&list).await
                && let Ok(targets) = response.json::<Vec<Value>>().await
                && let Some(page) = targets.iter().find(|t| {
                    t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
                })
            {
                return page["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "no page target for {url}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium's helper processes outlive the one killed for a moment and
        // may still write into the profile: a single removal sometimes left
        // it behind in /tmp (seen after a cold CI run). Try for up to a second.
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A minimal Chrome DevTools Protocol client: send a command, wait for its
/// answer, ignore events.
///
/// Kept by hand rather than taken from a crate: the test needs three
/// commands (`Runtime.evaluate`, `Page.captureScreenshot`, and the page list
/// over HTTP), about 60 lines here, while the maintained client,
/// chromiumoxide 0.7, brings bindings of the whole protocol
/// (`chromiumoxide_cdp`: 99,297 lines of generated Rust, 5 MB of source) to
/// compile on every cold CI build, pinned to one protocol revision that
/// Debian's Chromium moves past.
struct Cdp {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Cdp { socket, next_id: 0 }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let message = self.socket.next().await.expect("devtools closed").unwrap();
                if let Message::Text(text) = message {
                    let value: Value = serde_json::from_str(text.as_str()).unwrap();
                    if value["id"] == id {
                        return value;
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn evaluate(&mut self, expression: &str) -> Value {
        let result = self.try_evaluate(expression).await;
        result.unwrap_or_else(|details| panic!("{expression}: {details}"))
    }

    /// Like [`Self::evaluate`], but an exception in the page (a read while
    /// the page is half rendered, or while its context is being replaced) is
    /// returned rather than failing the test, for callers that poll.
    async fn try_evaluate(&mut self, expression: &str) -> Result<Value, Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        match result.get("exceptionDetails") {
            Some(details) => Err(details.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    async fn screenshot(&mut self, path: &Path) {
        let result = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(result["data"].as_str().unwrap())
            .expect("Page.captureScreenshot answered data that is not base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

/// What the page shows, read from its DOM.
const READ_PAGE: &str = r#"(() => document.getElementById('banner') === null ? '{}' : JSON.stringify({
  pageId: window.__dashboard && window.__dashboard.pageId,
  updates: window.__dashboard ? window.__dashboard.updates : 0,
  snapshots: window.__dashboard ? window.__dashboard.snapshots : 0,
  deltas: window.__dashboard ? window.__dashboard.deltas : 0,
  connects: window.__dashboard ? window.__dashboard.connects : 0,
  live: document.getElementById('live').dataset.state,
  total: document.getElementById('total-votes').dataset.value,
  leader: document.getElementById('leader').dataset.party,
  margin: document.getElementById('margin').dataset.value,
  boxes: document.getElementById('boxes-reported').dataset.value,
  bars: Object.fromEntries([...document.querySelectorAll('.bar')].map(b => [b.dataset.party, b.querySelector('.votes').dataset.value])),
  cities: Object.fromEntries([...document.querySelectorAll('#cities-body tr')].map(r => [r.dataset.city, r.dataset.total])),
  series: [...document.querySelectorAll('#chart path.series')].map(p => p.dataset.party).sort(),
  points: (() => { const p = document.querySelector('#chart path.series'); return p ? p.getAttribute('d').split(/[ML]/).length - 1 : 0; })(),
  banner: document.getElementById('banner').textContent,
  title: document.getElementById('election-name').textContent,
  reporting: document.getElementById('reporting').textContent,
  reported: document.getElementById('reporting').dataset.reported,
  expected: document.getElementById('reporting').dataset.expected,
  percent: document.getElementById('reporting').dataset.percent,
  colours: Object.fromEntries([...document.querySelectorAll('.bar')].map(b => [b.dataset.party, b.dataset.colour])),
  names: Object.fromEntries([...document.querySelectorAll('.bar')].map(b => [b.dataset.party, b.querySelector('.name').textContent])),
  cityNames: Object.fromEntries([...document.querySelectorAll('#cities-body tr')].map(r => [r.dataset.city, r.querySelector('td').textContent])),
  cityReporting: Object.fromEntries([...document.querySelectorAll('#cities-body tr')].map(r => [r.dataset.city, r.querySelectorAll('td')[1].textContent])),
  status: document.getElementById('status').dataset.status,
  cityStatus: Object.fromEntries([...document.querySelectorAll('#cities-body tr')].map(r => [r.dataset.city, r.querySelectorAll('td')[2].textContent])),
  cityFlags: Object.fromEntries([...document.querySelectorAll('#cities-body tr')].map(r => [r.dataset.city, r.querySelectorAll('td')[3].dataset.flags]))
}))()"#;

/// What the page shows now; `{}` while it cannot be read (pollers retry).
async fn read_page(cdp: &mut Cdp) -> Value {
    let text = cdp.try_evaluate(READ_PAGE).await.unwrap_or(Value::Null);
    serde_json::from_str(text.as_str().unwrap_or("{}")).unwrap()
}

/// Polls the page until `done` holds, for at most `within`.
async fn wait_for(cdp: &mut Cdp, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let page = read_page(cdp).await;
        if done(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not get there within {within:?}; it shows {page}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("artifacts")
}

/// A report as (ballot box, city, votes).
type Posted = (&'static str, &'static str, &'static [(&'static str, u32)]);

/// The rest of the evening after the seed.
const EVENING: [Posted; 10] = [
    (
        "BB-BRI-1",
        "bristol",
        &[
            ("tories", 70),
            ("labour", 95),
            ("libdems", 60),
            ("reform", 12),
            ("green", 41),
        ],
    ),
    (
        "BB-CAR-1",
        "cardiff",
        &[
            ("tories", 44),
            ("labour", 101),
            ("libdems", 18),
            ("reform", 9),
            ("green", 12),
        ],
    ),
    (
        "BB-GLA-1",
        "glasgow",
        &[
            ("tories", 40),
            ("labour", 160),
            ("libdems", 25),
            ("reform", 15),
            ("green", 30),
        ],
    ),
    (
        "BB-BIR-1",
        "birmingham",
        &[
            ("tories", 180),
            ("labour", 170),
            ("libdems", 40),
            ("reform", 60),
            ("green", 10),
        ],
    ),
    (
        "BB-LIV-1",
        "liverpool",
        &[
            ("tories", 30),
            ("labour", 210),
            ("libdems", 20),
            ("reform", 25),
            ("green", 15),
        ],
    ),
    (
        "BB-NEW-1",
        "newcastle",
        &[
            ("tories", 85),
            ("labour", 140),
            ("libdems", 22),
            ("reform", 70),
            ("green", 8),
        ],
    ),
    (
        "BB-SHE-1",
        "sheffield",
        &[
            ("tories", 60),
            ("labour", 90),
            ("libdems", 120),
            ("reform", 20),
            ("green", 35),
        ],
    ),
    (
        "BB-LON-2",
        "london",
        &[
            ("tories", 140),
            ("labour", 180),
            ("libdems", 70),
            ("reform", 30),
            ("green", 25),
        ],
    ),
    (
        "BB-BIR-2",
        "birmingham",
        &[
            ("tories", 150),
            ("labour", 120),
            ("libdems", 35),
            ("reform", 55),
            ("green", 12),
        ],
    ),
    (
        "BB-BRI-2",
        "bristol",
        &[
            ("tories", 50),
            ("labour", 70),
            ("libdems", 45),
            ("reform", 8),
            ("green", 90),
        ],
    ),
];

/// Moves a recorded revision `minutes` into the past, as if it had been
/// reported then (so the timeline has an evening to draw).
fn backdate(stack: &Stack, report_id: i64, minutes: u32) {
    stack.execute(&format!(
        "UPDATE reports SET received_at = now() - interval '{minutes} minutes' WHERE id = {report_id}"
    ));
}

/// Expected figures of a set of reports: national per party, per city.
fn expected(reports: &[Posted]) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let mut national = BTreeMap::new();
    let mut cities = BTreeMap::new();
    for (_, city, votes) in reports {
        for (party, n) in *votes {
            *national.entry((*party).to_owned()).or_insert(0) += i64::from(*n);
            *cities.entry((*city).to_owned()).or_insert(0) += i64::from(*n);
        }
    }
    (national, cities)
}

fn shows_total(page: &Value, total: i64) -> bool {
    page["total"].as_str().and_then(|t| t.parse::<i64>().ok()) == Some(total)
}

fn as_strings(map: &BTreeMap<String, i64>) -> Value {
    map.iter()
        .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn cities_in_order(page: &Value) -> String {
    page.as_str().unwrap_or_default().to_owned()
}

const CITY_ORDER: &str =
    "[...document.querySelectorAll('#cities-body tr')].map(r => r.dataset.city).join(',')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_seed_and_updates_live_without_reloading() {
    // Whole timeline reads, so the backdated evening shows at once.
    let settings = election_query::Settings {
        timeline_full_refresh: Duration::ZERO,
        ..crate::harness::query_settings()
    };
    let stack = Stack::start_with(settings).await;
    for (index, body) in SEED.iter().enumerate() {
        let (status, answer) = stack.post(body).await;
        assert_eq!(status, 201, "{answer}");
        backdate(
            &stack,
            answer["report_id"].as_i64().unwrap(),
            150 - 12 * index as u32,
        );
    }
    stack.wait_for_total(840, Duration::from_secs(10)).await;

    let url = format!("{}/?election={}", stack.query.base, stack.election);
    let browser = Browser::launch(&url, 1440, 1000);
    let mut cdp = Cdp::connect(&browser.page(&url).await).await;

    // The seed's totals, from the stream.
    let shown = wait_for(&mut cdp, Duration::from_secs(30), |page| {
        page["total"] == "840" && page["live"] == "live"
    })
    .await;
    // Chromium asks for compression on its own: the page above was drawn
    // from a gzip stream.
    let (_, metrics) =
        crate::harness::get(&stack.client, &format!("{}/metrics", stack.query.base)).await;
    let metrics = metrics.as_str().expect("metrics are text");
    assert!(
        metrics.contains("query_streams_opened_total{encoding=\"gzip\"}"),
        "{metrics}"
    );
    assert_eq!(shown["leader"], "labour");
    assert_eq!(shown["margin"], "170");
    assert_eq!(shown["boxes"], "3");
    assert_eq!(
        shown["bars"],
        json!({"labour": "430", "tories": "260", "libdems": "115", "reform": "35"})
    );
    assert_eq!(
        shown["cities"],
        json!({"london": "385", "manchester": "280", "edinburgh": "175"})
    );
    assert_eq!(shown["banner"], "");
    let page_id = shown["pageId"].clone();

    // The rest of the evening arrives while the page is open.
    for (index, (ballot_box, city, votes)) in EVENING.iter().enumerate() {
        let votes: serde_json::Map<String, Value> = votes
            .iter()
            .map(|(p, n)| ((*p).to_owned(), json!(n)))
            .collect();
        let body = json!({"ballot_box_id": ballot_box, "city": city, "votes": votes});
        let (status, answer) = stack.post(&body.to_string()).await;
        assert_eq!(status, 201, "{answer}");
        backdate(
            &stack,
            answer["report_id"].as_i64().unwrap(),
            118 - 11 * index as u32,
        );
    }
    let mut evening: Vec<Posted> = vec![
        (
            "BB-LON-1",
            "london",
            &[
                ("tories", 120),
                ("labour", 200),
                ("libdems", 45),
                ("reform", 20),
            ],
        ),
        (
            "BB-MAN-1",
            "manchester",
            &[
                ("tories", 90),
                ("labour", 150),
                ("libdems", 30),
                ("reform", 10),
            ],
        ),
        (
            "BB-EDI-1",
            "edinburgh",
            &[
                ("tories", 50),
                ("labour", 80),
                ("libdems", 40),
                ("reform", 5),
            ],
        ),
    ];
    evening.extend(EVENING.iter().copied());
    let (national, cities) = expected(&evening);
    let total: i64 = national.values().sum();
    // The counters of the last report and its box's entry in the reported
    // set are separate keys, so one snapshot may catch the new total a tick
    // before the new box count: wait for the whole final state.
    let shown = wait_for(&mut cdp, Duration::from_secs(10), |page| {
        shows_total(page, total) && page["boxes"] == "13"
    })
    .await;
    assert_eq!(shown["pageId"], page_id, "the page was reloaded");
    // One snapshot on connect; the evening came as deltas.
    assert_eq!(shown["snapshots"], 1, "{shown}");
    assert!(shown["deltas"].as_u64().unwrap() >= 1, "{shown}");
    assert_eq!(shown["bars"], as_strings(&national));
    assert_eq!(shown["cities"], as_strings(&cities));
    assert_eq!(shown["boxes"], "13");
    assert_eq!(shown["leader"], "labour");
    assert_eq!(
        shown["margin"],
        (national["labour"] - national["tories"]).to_string()
    );

    // Sorting and filtering the city table.
    let names: Vec<&String> = cities.keys().collect();
    let ascending = names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let descending = names
        .iter()
        .rev()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let mut by_total: Vec<(&String, &i64)> = cities.iter().collect();
    by_total.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let by_total = by_total
        .iter()
        .map(|(c, _)| c.as_str())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        cities_in_order(&cdp.evaluate(CITY_ORDER).await),
        by_total,
        "default: by votes"
    );
    let click =
        |key: &str| format!("document.querySelector('th[data-key={key}]').click(); {CITY_ORDER}");
    assert_eq!(
        cities_in_order(&cdp.evaluate(&click("city")).await),
        ascending
    );
    assert_eq!(
        cities_in_order(&cdp.evaluate(&click("city")).await),
        descending
    );
    assert_eq!(
        cities_in_order(&cdp.evaluate(&click("total")).await),
        by_total
    );
    let filtered = cdp
        .evaluate(&format!("(() => {{ const f = document.getElementById('filter'); f.value = 'man'; f.dispatchEvent(new Event('input')); return {CITY_ORDER}; }})()"))
        .await;
    assert_eq!(filtered, "manchester");
    cdp.evaluate("(() => { const f = document.getElementById('filter'); f.value = ''; f.dispatchEvent(new Event('input')); return true; })()")
        .await;

    // The timeline (refreshed every 10 s; asked again now): one point per
    // report, every party drawn.
    cdp.evaluate("document.getElementById('bucket').dispatchEvent(new Event('change')); true")
        .await;
    let charted = wait_for(&mut cdp, Duration::from_secs(10), |page| {
        page["points"].as_u64().unwrap_or(0) >= 14
    })
    .await;
    assert_eq!(
        charted["series"],
        json!(["green", "labour", "libdems", "reform", "tories"])
    );

    // Let the bars finish their animation, then the screenshot.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    cdp.screenshot(&artifacts().join("dashboard.png")).await;

    // A new report: on screen within 2 s, in the same page (no reload).
    let before = read_page(&mut cdp).await;
    let (status, _) = stack
        .post(r#"{"ballot_box_id": "BB-LEE-1", "city": "leeds", "votes": {"tories": 20, "labour": 50}}"#)
        .await;
    assert_eq!(status, 201);
    let posted = Instant::now();
    let after = wait_for(&mut cdp, Duration::from_secs(2), |page| {
        shows_total(page, total + 70)
    })
    .await;
    assert!(posted.elapsed() < Duration::from_secs(2));
    assert_eq!(after["pageId"], page_id, "the page was reloaded");
    assert!(after["updates"].as_u64().unwrap() > before["updates"].as_u64().unwrap());
    assert_eq!(after["cities"]["leeds"], "70");
    assert_eq!(after["boxes"], "14");
    assert_eq!(
        after["margin"],
        (national["labour"] + 50 - national["tories"] - 20).to_string()
    );

    // The phone layout: one column, no sideways scrolling.
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let width = cdp.evaluate("document.documentElement.scrollWidth").await;
    assert!(
        width.as_u64().unwrap() <= 390,
        "the page is {width} px wide on a 390 px phone: it scrolls sideways"
    );
    cdp.screenshot(&artifacts().join("dashboard-mobile.png"))
        .await;
    eprintln!("dashboard screenshots in {}", artifacts().display());
    drop(cdp);
    drop(browser);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_reporting_progress_and_party_colours() {
    let stack = Stack::start().await;
    let definition = election_core::Definition::from_toml(&format!(
        r##"id = "{}"
name = "Progress night"

[[parties]]
id = "labour"
name = "Labour Party"
colour = "#e4003b"

[[parties]]
id = "tories"
name = "Conservatives"
colour = "#112233"

[[cities]]
id = "london"
name = "Greater London"
expected_ballot_boxes = 3

[[cities]]
id = "leeds"
name = "Leeds"
expected_ballot_boxes = 1

# B1 reports 15 votes: more than its electorate, so it is flagged.
[electorate]
B1 = 10
"##,
        stack.election
    ))
    .unwrap();
    store_pg::definitions::load(&stack.pool, &definition).unwrap();
    let post = |ballot_box: &'static str, city: &'static str, labour: u32| {
        format!(
            r#"{{"ballot_box_id": "{ballot_box}", "city": "{city}", "votes": {{"labour": {labour}, "tories": 5}}}}"#
        )
    };
    assert_eq!(stack.post(&post("B1", "london", 10)).await.0, 201);
    stack.wait_for_total(15, Duration::from_secs(10)).await;

    let url = format!("{}/?election={}", stack.query.base, stack.election);
    let browser = Browser::launch(&url, 1440, 1000);
    let mut cdp = Cdp::connect(&browser.page(&url).await).await;
    let shown = wait_for(&mut cdp, Duration::from_secs(30), |page| {
        page["total"] == "15" && page["expected"] == "4" && page["colours"]["tories"] == "#112233"
    })
    .await;
    assert_eq!(shown["title"], "Progress night");
    assert_eq!(shown["reported"], "1");
    assert_eq!(shown["percent"], "25");
    assert!(
        shown["reporting"]
            .as_str()
            .unwrap()
            .starts_with("1 of 4 reporting"),
        "{shown}"
    );
    assert_eq!(shown["colours"]["labour"], "#e4003b");
    assert_eq!(shown["names"]["labour"], "Labour Party");
    assert_eq!(shown["cityNames"]["london"], "Greater London");
    assert_eq!(shown["cityReporting"]["london"], "1 / 3 (33.3%)");
    // A defined city is listed before its first report.
    assert_eq!(shown["cityReporting"]["leeds"], "0 / 1 (0.0%)");
    assert_eq!(shown["status"], "partial");
    assert_eq!(shown["cityStatus"]["london"], "partial");
    let shown = wait_for(&mut cdp, Duration::from_secs(20), |page| {
        page["cityFlags"]["london"] == "1"
    })
    .await;
    assert_eq!(shown["cityFlags"]["leeds"], "0");
    assert_eq!(shown["cityStatus"]["leeds"], "not reporting");

    // The rest of the night, live: progress climbs to 100%.
    for (ballot_box, city) in [("B2", "london"), ("B3", "london"), ("B4", "leeds")] {
        assert_eq!(stack.post(&post(ballot_box, city, 1)).await.0, 201);
    }
    let shown = wait_for(&mut cdp, Duration::from_secs(10), |page| {
        page["percent"] == "100"
    })
    .await;
    assert!(
        shown["reporting"]
            .as_str()
            .unwrap()
            .starts_with("4 of 4 reporting"),
        "{shown}"
    );
    assert_eq!(shown["cityReporting"]["leeds"], "1 / 1 (100.0%)");
    assert_eq!(shown["status"], "complete");
    // Leeds is certified: the page marks it (definitions are read again
    // every few seconds).
    store_pg::definitions::certify(
        &stack.pool,
        &stack.election,
        Some(&[election_core::CityId::parse("leeds").unwrap()]),
        "Returning Officer",
    )
    .unwrap();
    let shown = wait_for(&mut cdp, Duration::from_secs(20), |page| {
        page["cityStatus"]["leeds"] == "\u{2713} certified"
    })
    .await;
    assert_eq!(shown["cityStatus"]["london"], "complete");
    cdp.screenshot(&artifacts().join("dashboard-progress.png"))
        .await;
    drop(cdp);
    drop(browser);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_phone_the_dashboard_applies_deltas_and_comes_back_after_a_restart() {
    let mut stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;

    let url = format!("{}/?election={}", stack.query.base, stack.election);
    let browser = Browser::launch(&url, 390, 844);
    let mut cdp = Cdp::connect(&browser.page(&url).await).await;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    )
    .await;

    // The whole state once, from the stream's snapshot.
    let shown = wait_for(&mut cdp, Duration::from_secs(30), |page| {
        page["total"] == "840" && page["live"] == "live"
    })
    .await;
    assert_eq!(shown["snapshots"], 1, "{shown}");
    assert_eq!(shown["deltas"], 0, "{shown}");
    assert_eq!(
        shown["cities"],
        json!({"london": "385", "manchester": "280", "edinburgh": "175"})
    );
    let page_id = shown["pageId"].clone();

    // New reports: applied from deltas (cities added and changed, the
    // others kept), no new snapshot, no reload.
    for body in [
        r#"{"ballot_box_id": "BB-LEE-1", "city": "leeds", "votes": {"tories": 20, "labour": 50}}"#,
        r#"{"ballot_box_id": "BB-LON-2", "city": "london", "votes": {"labour": 5}}"#,
    ] {
        let (status, answer) = stack.post(body).await;
        assert_eq!(status, 201, "{answer}");
    }
    let shown = wait_for(&mut cdp, Duration::from_secs(5), |page| {
        shows_total(page, 915) && page["boxes"] == "5"
    })
    .await;
    assert_eq!(shown["pageId"], page_id, "the page was reloaded");
    assert_eq!(shown["snapshots"], 1, "{shown}");
    assert!(shown["deltas"].as_u64().unwrap() >= 1, "{shown}");
    assert_eq!(
        shown["cities"],
        json!({"london": "390", "manchester": "280", "edinburgh": "175", "leeds": "70"})
    );
    assert_eq!(shown["leader"], "labour");
    assert_eq!(shown["margin"], (485 - 280).to_string());
    assert_eq!(
        shown["bars"],
        json!({"labour": "485", "tories": "280", "libdems": "115", "reform": "35"})
    );

    // The phone layout: no sideways scrolling.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let width = cdp.evaluate("document.documentElement.scrollWidth").await;
    assert!(
        width.as_u64().unwrap() <= 390,
        "the page is {width} px wide on a 390 px phone: it scrolls sideways"
    );
    cdp.screenshot(&artifacts().join("dashboard-phone.png"))
        .await;

    // The service restarts (a deployment): the stream ends, the page says
    // so and reconnects by itself. A report arrives meanwhile; the new
    // process never gave the page's last event id, so it sends a snapshot.
    stack.stop_query().await;
    wait_for(&mut cdp, Duration::from_secs(10), |page| {
        page["live"] == "connecting"
    })
    .await;
    let (status, answer) = stack
        .post(r#"{"ballot_box_id": "BB-YOR-1", "city": "york", "votes": {"green": 9}}"#)
        .await;
    assert_eq!(status, 201, "{answer}");
    stack.restart_query().await;
    let shown = wait_for(&mut cdp, Duration::from_secs(20), |page| {
        shows_total(page, 924) && page["live"] == "live"
    })
    .await;
    assert_eq!(shown["pageId"], page_id, "the page was reloaded");
    assert_eq!(shown["snapshots"], 2, "{shown}");
    assert_eq!(shown["cities"]["york"], "9");
    assert_eq!(shown["cities"]["leeds"], "70");
    let deltas = shown["deltas"].as_u64().unwrap();

    // And deltas flow again on the new stream.
    let (status, answer) = stack
        .post(r#"{"ballot_box_id": "BB-YOR-2", "city": "york", "votes": {"green": 1}}"#)
        .await;
    assert_eq!(status, 201, "{answer}");
    let shown = wait_for(&mut cdp, Duration::from_secs(5), |page| {
        shows_total(page, 925) && page["boxes"] == "7"
    })
    .await;
    assert!(shown["deltas"].as_u64().unwrap() > deltas, "{shown}");
    assert_eq!(shown["snapshots"], 2, "{shown}");
    assert_eq!(shown["cities"]["york"], "10");
    drop(cdp);
    drop(browser);
    stack.stop().await;
}
