//! `docs/openapi.yaml` is true: every route of both routers is documented,
//! every documented route is served, and a real answer of **every documented
//! status** of every operation, from the running services, matches its
//! documented media type and schema.
//!
//! The schemas are checked by the `jsonschema` crate (JSON Schema 2020-12,
//! the dialect of OpenAPI 3.1, with formats such as `date-time` checked);
//! the document's id patterns are checked against the domain's own parsers
//! (`patterns_agree_with_the_domain`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use election_core::{BallotBoxId, CityId, ElectionId};
use election_ingest::auth::Scope;
use futures_util::StreamExt;
use serde_json::Value;
use store_redis::RedisTally;

use crate::harness::{
    Events, FixedTokens, SEED, Stack, ingest_settings, issue_token, query_settings, redis_options,
    start_ingest, start_ingest_with, start_query,
};

/// The document, parsed.
struct Doc {
    root: Value,
}

impl Doc {
    fn load() -> Doc {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let root: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(root["openapi"], "3.1.0");
        Doc { root }
    }

    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("only local references: {reference}"));
                let target = self
                    .root
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling reference {reference}"));
                self.resolve(target)
            }
            None => value,
        }
    }

    /// Every `(method, path)` documented.
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut operations = BTreeSet::new();
        for (path, item) in self.root["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "patch", "delete", "head", "options"]
                    .contains(&method.as_str())
                {
                    operations.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        operations
    }

    /// Every `(method, path, status)` documented.
    fn answers(&self) -> BTreeSet<(String, String, String)> {
        let mut answers = BTreeSet::new();
        for (method, path) in self.operations() {
            let operation = &self.root["paths"][&path][method.to_lowercase()];
            for status in operation["responses"].as_object().unwrap().keys() {
                answers.insert((method.clone(), path.clone(), status.clone()));
            }
        }
        answers
    }

    /// The documented response of an operation for a status.
    fn response(&self, method: &str, path: &str, status: u16) -> &Value {
        let operation = &self.root["paths"][path][method.to_lowercase()];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let response = &operation["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {path} answered {status}, which is not documented"
        );
        self.resolve(response)
    }

    /// Checks `value` against `schema` (a part of the document: its `$ref`s
    /// point into the document) with the `jsonschema` crate, JSON Schema
    /// 2020-12 as OpenAPI 3.1 uses it, formats checked.
    #[track_caller]
    fn check_value(&self, schema: &Value, value: &Value, what: &str) {
        // The document itself is the root resource, so `#/components/...`
        // resolves; the schema to check is put under a key of its own and
        // referenced (the document's other keys are not JSON-schema keywords,
        // so they constrain nothing).
        let mut root = self.root.clone();
        root["x-checked"] = schema.clone();
        root["$ref"] = Value::String("#/x-checked".to_owned());
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|error| {
                panic!("{what}: the document's schema does not compile: {error}")
            });
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|error| format!("{}: {error}", error.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{what}: {errors:#?}\nvalue: {value}");
    }

    /// Every `pattern` the document uses, wherever it stands.
    fn patterns(&self) -> BTreeSet<String> {
        fn walk(value: &Value, found: &mut BTreeSet<String>) {
            match value {
                Value::Object(map) => {
                    for (key, inner) in map {
                        match (key.as_str(), inner) {
                            ("pattern", Value::String(pattern)) => {
                                found.insert(pattern.clone());
                            }
                            _ => walk(inner, found),
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|inner| walk(inner, found)),
                _ => {}
            }
        }
        let mut found = BTreeSet::new();
        walk(&self.root, &mut found);
        found
    }
}

/// The domain parser a document pattern stands for: the document's patterns
/// are the domain's id alphabets, and [`patterns_agree_with_the_domain`]
/// checks that each says what its parser accepts, so the document and the
/// code cannot drift apart. A pattern not listed here fails that test.
fn domain_parser(pattern: &str) -> Option<fn(&str) -> bool> {
    Some(match pattern {
        "^[a-z0-9][a-z0-9-]{0,63}$" => |text| ElectionId::parse(text).is_ok(),
        "^[a-z0-9][a-z0-9_-]{0,63}$" => |text| CityId::parse(text).is_ok(),
        "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$" => |text| BallotBoxId::parse(text).is_ok(),
        // Colours as the definition stores them (lowercase).
        "^#[0-9a-f]{6}$" => {
            |text| election_core::Colour::parse(text).is_ok_and(|c| c.as_str() == text)
        }
        // A SHA-256 in lower-case hex, as the sealed log publishes it.
        "^[0-9a-f]{64}$" => |text| {
            text.len() == 64
                && text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        },
        _ => return None,
    })
}

/// Patterns of request bodies that describe a rule of `Report::from_json`
/// with no parser of their own (a correction's `reason`: not blank, no
/// control characters but line feeds); ingest's contract tests and
/// schemathesis hold the service to them.
const REQUEST_RULES: &[&str] = &[r"\S", r"^[^\x00-\x09\x0b-\x1f\x7f-\x9f]*$"];

#[test]
fn patterns_agree_with_the_domain() {
    let doc = Doc::load();
    let hex = "0123456789abcdef".repeat(4);
    let mut samples: Vec<String> = [
        "",
        "a",
        "Z",
        "0",
        "city-0001",
        "city_0001",
        "Box-7",
        "-a",
        "_a",
        "a b",
        "é",
        "a.b",
        "#00ff00",
        "#00FF00",
        "#00ff0",
        "00ff00",
        "2026-11-30",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    samples.extend([
        "a".repeat(64),
        "a".repeat(65),
        hex.clone(),
        hex.to_uppercase(),
        hex[1..].to_string(),
    ]);
    let patterns = doc.patterns();
    assert!(patterns.len() >= 5, "the document's patterns: {patterns:?}");
    for pattern in patterns
        .iter()
        .filter(|p| !REQUEST_RULES.contains(&p.as_str()))
    {
        let parser = domain_parser(pattern)
            .unwrap_or_else(|| panic!("no domain parser is known for the pattern {pattern}"));
        let validator =
            jsonschema::validator_for(&serde_json::json!({"type": "string", "pattern": pattern}))
                .unwrap();
        for sample in &samples {
            assert_eq!(
                validator.is_valid(&Value::String(sample.clone())),
                parser(sample),
                "the pattern {pattern} and its domain parser disagree on {sample:?}"
            );
        }
    }
}

/// Checks answers against the document and remembers what was covered.
struct Checker {
    doc: Doc,
    seen: BTreeSet<(String, String, String)>,
    client: reqwest::Client,
}

impl Checker {
    /// Sends `request`, checks the answer against `method path`'s
    /// documentation, and returns its status and body.
    async fn check(
        &mut self,
        method: &str,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> (u16, String) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let documented = self.doc.response(method, path, status).clone();
        let what = format!("{method} {path} {status}");
        // Every header documented as required is there.
        if let Some(headers) = documented["headers"].as_object() {
            for (name, header) in headers {
                if self.doc.resolve(header)["required"] == true {
                    assert!(
                        response.headers().contains_key(name.as_str()),
                        "{what}: required header {name} missing"
                    );
                }
            }
        }
        if documented.get("content").is_none() {
            // No body documented (304): none sent.
            let body = response.text().await.unwrap();
            assert!(
                body.is_empty(),
                "{what}: a body where none is documented: {body}"
            );
            self.seen
                .insert((method.to_owned(), path.to_owned(), status.to_string()));
            return (status, body);
        }
        let content = documented["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} {status}: no content documented"));
        let (media, spec) = content
            .iter()
            .find(|(media, _)| content_type.split(';').next().unwrap().trim() == media.as_str())
            .unwrap_or_else(|| {
                panic!(
                    "{method} {path} {status}: content type {content_type:?} is not documented \
                     ({:?})",
                    content.keys().collect::<Vec<_>>()
                )
            });
        let body = if media == "text/event-stream" {
            // Read the first event and check its data against its schema.
            let mut events = Events::new(response);
            let event = events.next_within(Duration::from_secs(5)).await;
            let schema = &spec["x-sse-events"][&event.event];
            assert!(
                schema.is_object(),
                "{what}: event {:?} undocumented",
                event.event
            );
            let data: Value = serde_json::from_str(&event.data).unwrap();
            self.doc.check_value(schema, &data, &what);
            assert_eq!(event.id, data["version"].to_string());
            event.data
        } else {
            let text = response.text().await.unwrap();
            if media == "application/yaml" {
                let value: Value = serde_yaml::from_str(&text)
                    .unwrap_or_else(|e| panic!("{what}: not YAML ({e})"));
                self.doc.check_value(&spec["schema"], &value, &what);
            } else if media == "application/json" {
                let value: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
                self.doc.check_value(&spec["schema"], &value, &what);
            } else {
                self.doc
                    .check_value(&spec["schema"], &Value::String(text.clone()), &what);
                if media == "text/csv" {
                    let example = spec["example"].as_str().unwrap();
                    assert_eq!(
                        text.lines().next(),
                        example.lines().next(),
                        "{what}: the header differs from the documented example"
                    );
                }
            }
            text
        };
        self.seen
            .insert((method.to_owned(), path.to_owned(), status.to_string()));
        (status, body)
    }
}

const REPORTS: &str = "/v1/elections/{election}/reports";
const BATCHES: &str = "/v1/elections/{election}/report-batches";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_true_of_both_services() {
    let doc = Doc::load();

    // Every route of both routers is documented, and nothing else is.
    let mut served: BTreeSet<(String, String)> = BTreeSet::new();
    for (method, path) in election_query::api::routes()
        .into_iter()
        .chain(election_ingest::service::ROUTES.iter().copied())
    {
        served.insert((method.to_owned(), path.to_owned()));
    }
    let documented = doc.operations();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from docs/openapi.yaml: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );

    let stack = Stack::start().await;
    let mut checker = Checker {
        doc,
        seen: BTreeSet::new(),
        client: stack.client.clone(),
    };
    let client = checker.client.clone();
    let ingest = stack.ingest.base.clone();
    let e = stack.election.to_string();
    let post = |base: &str, election: &str, token: &str, body: &str| {
        client
            .post(format!("{base}/v1/elections/{election}/reports"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
    };

    // --- ingest: every documented answer -------------------------------
    let token = stack.token.clone();
    for body in SEED {
        let (status, _) = checker
            .check("POST", REPORTS, post(&ingest, &e, &token, body))
            .await;
        assert_eq!(status, 201);
    }
    let (status, _) = checker
        .check("POST", REPORTS, post(&ingest, &e, &token, SEED[0]))
        .await;
    assert_eq!(status, 200);
    let (status, _) = checker
        .check(
            "POST",
            REPORTS,
            post(&ingest, &e, &token, "{\"ballot_box_id\": "),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = checker
        .check(
            "POST",
            REPORTS,
            client
                .post(format!("{ingest}/v1/elections/{e}/reports"))
                .header("content-type", "application/json")
                .body(SEED[0]),
        )
        .await;
    assert_eq!(status, 401);
    let other_token = issue_token(&stack.pool, "another-election");
    let (status, _) = checker
        .check("POST", REPORTS, post(&ingest, &e, &other_token, SEED[0]))
        .await;
    assert_eq!(status, 403);
    let (status, _) = checker
        .check(
            "POST",
            REPORTS,
            post(
                &ingest,
                &e,
                &token,
                r#"{"ballot_box_id": "BB-LON-1", "city": "london", "votes": {"labour": 1}}"#,
            ),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = checker
        .check(
            "POST",
            REPORTS,
            post(&ingest, &e, &token, &" ".repeat(70 * 1024)),
        )
        .await;
    assert_eq!(status, 413);
    let (status, _) = checker
        .check(
            "POST",
            REPORTS,
            client
                .post(format!("{ingest}/v1/elections/{e}/reports"))
                .bearer_auth(&token)
                .header("content-type", "text/plain")
                .body(SEED[0]),
        )
        .await;
    assert_eq!(status, 415);
    let (status, _) = checker
        .check(
            "POST",
            REPORTS,
            post(
                &ingest,
                &e,
                &token,
                r#"{"ballot_box_id": "BB9", "city": "London", "votes": {"labour": 1}}"#,
            ),
        )
        .await;
    assert_eq!(status, 422);

    // The bulk endpoint: items answered one by one, and every whole-request
    // answer.
    let batch = |base: &str, election: &str, token: &str, body: &str| {
        client
            .post(format!("{base}/v1/elections/{election}/report-batches"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let mixed = format!(
        r#"{{"reports": [{}, {{"ballot_box_id": "BB9", "city": "London", "votes": {{"labour": 1}}}}]}}"#,
        SEED[0]
    );
    let (status, body) = checker
        .check("POST", BATCHES, batch(&ingest, &e, &token, &mixed))
        .await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let item_statuses: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["status"].as_u64().unwrap())
        .collect();
    // A replay and an invalid item: nothing new is counted (the query
    // checks below expect the seed's totals).
    assert_eq!(item_statuses, [200, 422]);
    let (status, _) = checker
        .check(
            "POST",
            BATCHES,
            batch(&ingest, &e, &token, r#"{"reports": []}"#),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = checker
        .check("POST", BATCHES, batch(&ingest, &e, "unknown", &mixed))
        .await;
    assert_eq!(status, 401);
    let (status, _) = checker
        .check("POST", BATCHES, batch(&ingest, &e, &other_token, &mixed))
        .await;
    assert_eq!(status, 403);
    let (status, _) = checker
        .check("POST", BATCHES, batch(&ingest, "Not-An-Id", &token, &mixed))
        .await;
    assert_eq!(status, 422);
    let too_many = format!(r#"{{"reports": [{}]}}"#, vec![SEED[0]; 1001].join(","));
    let (status, _) = checker
        .check("POST", BATCHES, batch(&ingest, &e, &token, &too_many))
        .await;
    assert_eq!(status, 413);
    let (status, _) = checker
        .check(
            "POST",
            BATCHES,
            client
                .post(format!("{ingest}/v1/elections/{e}/report-batches"))
                .bearer_auth(&token)
                .header("content-type", "text/plain")
                .body(mixed.clone()),
        )
        .await;
    assert_eq!(status, 415);

    // 408 and 429: an ingest with a short body deadline and a rate limit of
    // one report per token: a body that stalls, then a second post.
    let strict = start_ingest_with(
        stack.pool.clone(),
        Arc::clone(&stack.query_tally),
        Arc::new(election_ingest::commands::PgTokens(stack.pool.clone())),
        election_ingest::Settings {
            body_timeout: Duration::from_millis(300),
            rate_limit: Some(election_ingest::limit::RateLimit {
                per_second: 0.01,
                burst: 2,
            }),
            ..ingest_settings()
        },
    )
    .await;
    let limited_token = issue_token(&stack.pool, &e);
    let stalled = futures_util::stream::iter([Ok::<_, std::io::Error>(
        r#"{"ballot_box_id": "BB-SLOW""#.to_owned(),
    )])
    .chain(futures_util::stream::pending());
    let (status, _) = checker
        .check(
            "POST",
            REPORTS,
            post(&strict.base, &e, &limited_token, "").body(reqwest::Body::wrap_stream(stalled)),
        )
        .await;
    assert_eq!(status, 408);
    let (status, _) = checker
        .check(
            "POST",
            REPORTS,
            post(&strict.base, &e, &limited_token, SEED[2]),
        )
        .await;
    assert_eq!(status, 200, "the third seed report again: a replay");
    let (status, _) = checker
        .check(
            "POST",
            REPORTS,
            post(&strict.base, &e, &limited_token, SEED[2]),
        )
        .await;
    assert_eq!(status, 429);
    let (status, _) = checker
        .check(
            "POST",
            BATCHES,
            batch(&strict.base, &e, &limited_token, &mixed),
        )
        .await;
    assert_eq!(status, 429);
    let slow_token = issue_token(&stack.pool, &e);
    let stalled =
        futures_util::stream::iter([Ok::<_, std::io::Error>(r#"{"reports": ["#.to_owned())])
            .chain(futures_util::stream::pending());
    let (status, _) = checker
        .check(
            "POST",
            BATCHES,
            batch(&strict.base, &e, &slow_token, "").body(reqwest::Body::wrap_stream(stalled)),
        )
        .await;
    assert_eq!(status, 408);
    strict.stop().await;

    // 202: an ingest whose Redis is down records and defers.
    let dead_redis = Arc::new(
        RedisTally::connect(
            &store_redis::parse_target("redis://127.0.0.1:1").unwrap(),
            &redis_options(),
        )
        .unwrap(),
    );
    let deferring = start_ingest(
        stack.pool.clone(),
        Arc::clone(&dead_redis),
        Arc::new(election_ingest::commands::PgTokens(stack.pool.clone())),
    )
    .await;
    let (status, _) = checker
        .check(
            "POST",
            REPORTS,
            post(
                &deferring.base,
                &e,
                &token,
                r#"{"ballot_box_id": "BB-DEFER", "city": "york", "votes": {"labour": 1}}"#,
            ),
        )
        .await;
    assert_eq!(status, 202);
    deferring.stop().await;

    // 503: an ingest whose PostgreSQL is down records nothing. Its query
    // twin (Redis and PostgreSQL both down) answers every 503 of the read
    // API, and /readyz 503.
    let dead_pg = store_pg::connect(
        "postgres://postgres@127.0.0.1:1/x",
        2,
        Duration::from_secs(1),
    )
    .unwrap();
    let fixed = Arc::new(FixedTokens(vec![(
        token.clone(),
        Scope {
            election: stack.election.clone(),
            ballot_box: None,
        },
    )]));
    let refusing = start_ingest(dead_pg.clone(), Arc::clone(&dead_redis), fixed).await;
    let (status, _) = checker
        .check("POST", REPORTS, post(&refusing.base, &e, &token, SEED[1]))
        .await;
    assert_eq!(status, 503);
    let (status, _) = checker
        .check("POST", BATCHES, batch(&refusing.base, &e, &token, &mixed))
        .await;
    assert_eq!(status, 503);

    let broken = start_query(dead_pg.clone(), Arc::clone(&dead_redis), query_settings()).await;
    for path in [
        "/v1/elections/{election}",
        "/v1/elections/{election}/totals",
        "/v1/elections/{election}/cities",
        "/v1/elections/{election}/cities/{city}/totals",
        "/v1/elections/{election}/stream",
        "/v1/elections/{election}/results.cdf.json",
        "/v1/elections/{election}/analytics/cities",
        "/v1/elections/{election}/analytics/first-reports",
        "/v1/elections/{election}/timeline",
        "/v1/elections/{election}/flags",
        "/v1/elections/{election}/reports.csv",
        "/v1/elections/{election}/audit",
    ] {
        let url = format!(
            "{}{}",
            broken.base,
            path.replace("{election}", &e).replace("{city}", "london")
        );
        let (status, body) = checker.check("GET", path, client.get(url)).await;
        assert_eq!(status, 503, "{path}: {body}");
    }
    let (status, body) = checker
        .check(
            "GET",
            "/v1/elections",
            client.get(format!("{}/v1/elections", broken.base)),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = checker
        .check(
            "GET",
            "/readyz",
            client.get(format!("{}/readyz", broken.base)),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    broken.stop().await;
    refusing.stop().await;

    // --- query: every documented answer --------------------------------
    stack.wait_for_total(840, Duration::from_secs(10)).await;
    let query = stack.query.base.clone();
    let url = |path: &str| format!("{query}/v1/elections/{e}{path}");
    for (template, path) in [
        ("/v1/elections/{election}", ""),
        ("/v1/elections/{election}/totals", "/totals"),
        ("/v1/elections/{election}/cities", "/cities"),
        (
            "/v1/elections/{election}/cities/{city}/totals",
            "/cities/london/totals",
        ),
        ("/v1/elections/{election}/stream", "/stream"),
        (
            "/v1/elections/{election}/results.cdf.json",
            "/results.cdf.json",
        ),
        (
            "/v1/elections/{election}/analytics/cities",
            "/analytics/cities?from=2000-01-01T00:00:00Z",
        ),
        (
            "/v1/elections/{election}/analytics/first-reports",
            "/analytics/first-reports?limit=2",
        ),
        ("/v1/elections/{election}/timeline", "/timeline?bucket=1m"),
        ("/v1/elections/{election}/flags", "/flags"),
        ("/v1/elections/{election}/reports.csv", "/reports.csv"),
        ("/v1/elections/{election}/audit", "/audit"),
    ] {
        let (status, body) = checker.check("GET", template, client.get(url(path))).await;
        assert_eq!(status, 200, "{path}: {body}");
        // An election nobody defined or reported to: 404.
        let unknown = format!(
            "{query}{}",
            template
                .replace("{election}", &format!("{e}-nobody"))
                .replace("{city}", "london")
        );
        let (status, body) = checker.check("GET", template, client.get(unknown)).await;
        assert_eq!(status, 404, "{template}: {body}");
        assert!(body.contains("unknown_election"), "{template}: {body}");
        let (status, _) = checker
            .check(
                "GET",
                template,
                client.get(format!(
                    "{query}{}",
                    template
                        .replace("{election}", "Bad_Id")
                        .replace("{city}", "london")
                )),
            )
            .await;
        assert_eq!(status, 422, "{template}");
    }
    // Live JSON answers: the ETag sent back is a 304, with its validators.
    for (template, path) in [
        ("/v1/elections/{election}", ""),
        ("/v1/elections/{election}/totals", "/totals"),
        (
            "/v1/elections/{election}/results.cdf.json",
            "/results.cdf.json",
        ),
        ("/v1/elections/{election}/cities", "/cities"),
        (
            "/v1/elections/{election}/cities/{city}/totals",
            "/cities/london/totals",
        ),
    ] {
        let first = client.get(url(path)).send().await.unwrap();
        assert_eq!(first.status(), 200, "{path}");
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();
        let (status, _) = checker
            .check(
                "GET",
                template,
                client.get(url(path)).header("if-none-match", &etag),
            )
            .await;
        assert_eq!(status, 304, "{path} with {etag}");
    }
    // The list of elections, and the document itself on both services.
    let (status, body) = checker
        .check(
            "GET",
            "/v1/elections",
            client.get(format!("{query}/v1/elections")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("\"election\":\"{e}\"")), "{body}");
    for base in [&query, &ingest] {
        let (status, body) = checker
            .check(
                "GET",
                "/openapi.yaml",
                client.get(format!("{base}/openapi.yaml")),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(body, election_http::layers::OPENAPI_YAML);
    }
    // A defined election: expected boxes, percent reporting, names and
    // colours validate too.
    let defined = format!("{e}-defined");
    let definition = election_core::Definition::from_toml(&format!(
        "id = \"{defined}\"\nname = \"Defined\"\n[[parties]]\nid = \"labour\"\nname = \"Labour\"\ncolour = \"#e4003b\"\n[[cities]]\nid = \"london\"\nname = \"London\"\nexpected_ballot_boxes = 4\n"
    ))
    .unwrap();
    store_pg::definitions::load(&stack.pool, &definition).unwrap();
    for (template, path) in [
        ("/v1/elections/{election}", ""),
        ("/v1/elections/{election}/totals", "/totals"),
        ("/v1/elections/{election}/cities", "/cities"),
        (
            "/v1/elections/{election}/cities/{city}/totals",
            "/cities/london/totals",
        ),
        ("/v1/elections/{election}/stream", "/stream"),
    ] {
        let (status, body) = checker
            .check(
                "GET",
                template,
                client.get(format!("{query}/v1/elections/{defined}{path}")),
            )
            .await;
        assert_eq!(status, 200, "{path}: {body}");
        if path == "/totals" {
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["ballot_boxes_expected"], 4, "{body}");
            assert_eq!(body["percent_reporting"], 0.0, "{body}");
        }
    }
    // The leader's shape, and a tie's, both validate.
    let (status, body) = checker
        .check(
            "GET",
            "/v1/elections/{election}/cities/{city}/totals",
            client.get(url("/cities/paris/totals")),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = checker
        .check(
            "GET",
            "/v1/elections/{election}/cities/{city}/totals",
            client.get(url("/cities/Paris/totals")),
        )
        .await;
    assert_eq!(status, 422);
    for (template, path) in [
        (
            "/v1/elections/{election}/analytics/cities",
            "/analytics/cities?from=6pm",
        ),
        (
            "/v1/elections/{election}/analytics/first-reports",
            "/analytics/first-reports?limit=0",
        ),
        ("/v1/elections/{election}/timeline", "/timeline?bucket=2m"),
        ("/v1/elections/{election}/reports.csv", "/reports.csv?x=1"),
        ("/v1/elections/{election}/flags", "/flags?x=1"),
        ("/v1/elections/{election}", "?as_of=now"),
        (
            "/v1/elections/{election}/results.cdf.json",
            "/results.cdf.json?as_of=2025-09-15T18:00:00Z",
        ),
        ("/v1/elections/{election}/audit", "/audit?limit=0"),
        ("/v1/elections/{election}/stream", "/stream?scope=cities"),
        ("/v1/elections/{election}/totals", "/totals?as_of=yesterday"),
        (
            "/v1/elections/{election}/cities",
            "/cities?as_of=2999-01-01T00:00:00Z",
        ),
        (
            "/v1/elections/{election}/cities/{city}/totals",
            "/cities/london/totals?when=now",
        ),
    ] {
        let (status, body) = checker.check("GET", template, client.get(url(path))).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    let (status, body) = checker
        .check(
            "GET",
            "/v1/elections",
            client.get(format!("{query}/v1/elections?limit=5")),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // As-of answers have the live answers' shape.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for (template, path) in [
        ("/v1/elections/{election}/totals", "/totals"),
        ("/v1/elections/{election}/cities", "/cities"),
        (
            "/v1/elections/{election}/cities/{city}/totals",
            "/cities/london/totals",
        ),
    ] {
        let (status, body) = checker
            .check(
                "GET",
                template,
                client.get(url(path)).query(&[("as_of", now.as_str())]),
            )
            .await;
        assert_eq!(status, 200, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["as_of"], now.as_str(), "{path}: {body}");
    }
    for path in ["/", "/healthz", "/readyz", "/metrics"] {
        let (status, body) = checker
            .check("GET", path, client.get(format!("{query}{path}")))
            .await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // The shared health routes and metrics answer on ingest too.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _) = checker
            .check("GET", path, client.get(format!("{ingest}{path}")))
            .await;
        assert_eq!(status, 200, "ingest {path}");
    }

    // 500: a report of a box whose stored state was corrupted by hand is
    // refused alone (its batch-mates would be recorded). Last, as it adds a
    // box to the election.
    let (status, _) = checker
        .check(
            "POST",
            REPORTS,
            post(
                &ingest,
                &e,
                &token,
                r#"{"ballot_box_id": "BB-BROKEN", "city": "york", "votes": {"labour": 1}}"#,
            ),
        )
        .await;
    assert_eq!(status, 201);
    stack.execute(&format!(
        "UPDATE reports SET votes = array_fill(-1, ARRAY[cardinality(parties)]) \
         WHERE election_id = '{e}' AND ballot_box_id = 'BB-BROKEN'"
    ));
    let (status, body) = checker
        .check(
            "POST",
            REPORTS,
            post(
                &ingest,
                &e,
                &token,
                r#"{"ballot_box_id": "BB-BROKEN", "city": "york", "revision": 2, "reason": "recount", "votes": {"labour": 2}}"#,
            ),
        )
        .await;
    assert_eq!(status, 500, "{body}");

    // The audit answer with checkpoints: everything recorded so far sealed,
    // then one more report sealed, so the earlier head is listed too.
    let mut sealer = store_pg::seal::Sealer::new(stack.pool.clone());
    for _ in 0..2 {
        sealer.round().unwrap();
    }
    let (status, _) = checker
        .check(
            "POST",
            REPORTS,
            post(
                &ingest,
                &e,
                &token,
                r#"{"ballot_box_id": "BB-AUDIT", "city": "york", "votes": {"labour": 3}}"#,
            ),
        )
        .await;
    assert_eq!(status, 201);
    for _ in 0..2 {
        sealer.round().unwrap();
    }
    let (status, body) = checker
        .check(
            "GET",
            "/v1/elections/{election}/audit",
            client.get(url("/audit?limit=5")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let audit: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(audit["heads"].as_array().map(Vec::len), Some(1), "{audit}");

    // Every documented answer of every operation was produced for real.
    let missing: Vec<_> = checker
        .doc
        .answers()
        .difference(&checker.seen)
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "documented answers never checked: {missing:#?}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_that_is_not_an_integer_is_named_and_every_other_total_served() {
    let stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;
    let e = stack.election.to_string();
    // Someone overwrites London's counter of reform by hand.
    let key = format!("election:{e}:city:london:party:reform");
    let mut redis =
        election_test_support::redis::connection(&election_test_support::redis::redis_url());
    redis::cmd("SET")
        .arg(&key)
        .arg("oops")
        .exec(&mut redis)
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = stack.get("/totals").await;
        assert_eq!(status, 200, "{body}");
        if body.get("unreadable_counters").is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never named: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every live answer is 200, names the key, keeps every other counter,
    // and matches the document.
    let mut checker = Checker {
        doc: Doc::load(),
        seen: BTreeSet::new(),
        client: stack.client.clone(),
    };
    let named = serde_json::json!([key]);
    let query = stack.query.base.clone();
    for (template, path) in [
        ("/v1/elections/{election}/totals", "/totals"),
        ("/v1/elections/{election}/cities", "/cities"),
        (
            "/v1/elections/{election}/cities/{city}/totals",
            "/cities/london/totals",
        ),
        ("/v1/elections/{election}/stream", "/stream"),
    ] {
        let (status, body) = checker
            .check(
                "GET",
                template,
                stack.client.get(format!("{query}/v1/elections/{e}{path}")),
            )
            .await;
        assert_eq!(status, 200, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["unreadable_counters"], named, "{path}: {body}");
        let national = match path {
            "/totals" => Some(&body),
            "/stream" => Some(&body["national"]),
            _ => None,
        };
        let london = match path {
            "/cities" | "/stream" => Some(&body["cities"][1]),
            "/cities/london/totals" => Some(&body),
            _ => None,
        };
        if let Some(national) = national {
            // The national counter of reform is another key: still read.
            assert_eq!(national["parties"]["reform"], 35, "{path}: {body}");
            assert_eq!(national["total_votes"], 840, "{path}: {body}");
        }
        if let Some(london) = london {
            assert_eq!(london["city"], "london", "{path}: {body}");
            assert_eq!(
                london["parties"],
                serde_json::json!({"tories": 120, "labour": 200, "libdems": 45}),
                "{path}: {body}"
            );
        }
    }

    // Deleted: the field goes away (the counter now reads as absent until
    // `reconcile --repair` restores it).
    redis::cmd("DEL").arg(&key).exec(&mut redis).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = stack.get("/totals").await;
        if body.get("unreadable_counters").is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still named: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.stop().await;
}

/// Every kind of stream event (a snapshot and a delta of each variant)
/// matches its documented schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_event_matches_the_document() {
    let doc = Doc::load();
    let stack = Stack::start().await;
    stack.post_seed().await;
    stack.wait_for_total(840, Duration::from_secs(10)).await;
    let documented =
        doc.response("GET", "/v1/elections/{election}/stream", 200)["content"]["text/event-stream"]
            ["x-sse-events"]
            .clone();
    let mut streams = Vec::new();
    for rest in [
        "/stream",
        "/stream?scope=national",
        "/stream?scope=all",
        "/stream?city=london",
        "/stream?city=paris",
    ] {
        let mut events = crate::harness::open_stream_at(&stack, rest, None).await;
        let event = events.next_within(Duration::from_secs(5)).await;
        assert_eq!(event.event, "snapshot", "{rest}");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(event.id, data["version"].to_string());
        doc.check_value(&documented["snapshot"], &data, &format!("{rest} snapshot"));
        streams.push((rest, events));
    }
    // London reports, and so does Paris for the first time.
    for body in [
        r#"{"ballot_box_id": "BB-LON-2", "city": "london", "votes": {"labour": 1}}"#,
        r#"{"ballot_box_id": "BB-PAR-1", "city": "paris", "votes": {"labour": 2}}"#,
    ] {
        let (status, answer) = stack.post(body).await;
        assert_eq!(status, 201, "{answer}");
    }
    for (rest, events) in &mut streams {
        let event = events.next_within(Duration::from_secs(5)).await;
        assert_eq!(event.event, "delta", "{rest}");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(event.id, data["version"].to_string());
        doc.check_value(&documented["delta"], &data, &format!("{rest} delta"));
    }
    stack.stop().await;
}
