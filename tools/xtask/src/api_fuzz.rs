//! `cargo xtask api-fuzz [SEED]` (`just api-fuzz`): schemathesis against the
//! running services, checked against docs/openapi.yaml (issue #7). No answer
//! may be a 5xx, and every answer must have a documented status, the
//! documented content type and a body that matches its schema (and more: see
//! [`CHECKS`]).
//!
//! What it does, all of it undone at the end, on failure and on Ctrl-C:
//! - builds election-ingest and election-query as `cargo test --workspace
//!   --all-features` does (after the tests, nothing to build: see `built`);
//! - creates a PostgreSQL database of its own (`api_fuzz_<pid>_<random>`) on
//!   the server `DATABASE_URL` points at, migrates it, issues a token for a
//!   unique election id (`api-fuzz-<time>-<pid>`);
//! - starts both services on free ports against it and the Redis `REDIS_URL`
//!   points at, and posts a few reports (a correction among them) so the
//!   read endpoints have data;
//! - runs schemathesis on each service, restricted to the operations it
//!   serves: ingest with the token, query twice (once with the election
//!   pinned to the one holding data, so full answers are validated, and once
//!   with generated election ids, so odd path values are tried too);
//! - stops the services, drops the database and deletes the Redis keys of
//!   its election.
//!
//! schemathesis warns, every run, that `POST /v1/elections/{election}/reports`
//! "mostly rejected generated data". Read from target/api-fuzz/ingest.har
//! (2026-12-03, 181 posts): 128 answers were 400, 33 were 409 and 9 were 422,
//! and they are what the document says. Its coverage and negative phases
//! send invalid bodies on purpose; its generator writes integers as `1356.0`
//! (a 400 by the documented rule, see [`EXCLUDED_CHECKS`]); and the
//! document's example report names a box the set-up recorded with other
//! content (409). The warning is about the generator, not the API.
//!
//! Excluded: `GET /v1/elections/{election}/stream` (streamTotals). It is a
//! Server-Sent Events stream that stays open until the client leaves, so
//! every request would run into the request timeout, and schemathesis cannot
//! check `text/event-stream` events against a schema; the stream is tested by
//! bins/query/tests/integration/live.rs and openapi.rs instead.
//!
//! Settings: the seed (argument, else `API_FUZZ_SEED`; random by default,
//! printed), `API_FUZZ_EXAMPLES` (examples per operation and phase, default
//! 100), `API_FUZZ_CHECKS` / `API_FUZZ_EXCLUDE_CHECKS` (schemathesis
//! `--checks` and `--exclude-checks`), `API_FUZZ_SPEC` (the document, default
//! docs/openapi.yaml), `DATABASE_URL`, `REDIS_URL`, `CARGO_TARGET_DIR`.
//! Reports (JUnit, and every request and answer as HAR) and the services'
//! logs are left in target/api-fuzz/.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::built::TestBuild;
use crate::shell::{
    RedisAddr, Teardown, env, free_port, on_path, output_quietly, post_json, random, succeeds,
    wait_for_http,
};

/// The checks: every one schemathesis has (no 5xx; every answer documented:
/// status, content type, headers, body schema; a body the schema refuses is
/// refused; a missing token is a 401; an unsupported method a 405 with
/// `Allow`), but [`EXCLUDED_CHECKS`].
const CHECKS: &str = "all";
/// positive_data_acceptance ("a request valid for the schema is accepted"):
/// two rules of the API cannot be written in JSON Schema and it trips on them
/// every run. A count written `2.0` is a JSON Schema integer but a 400 here
/// (the document says so in words), and an analytics window with `from`
/// after `to` is a 400 though each bound is valid on its own.
const EXCLUDED_CHECKS: &str = "positive_data_acceptance";
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The reports posted before fuzzing, so the read endpoints have data.
const REPORTS: [&str; 4] = [
    r#"{"ballot_box_id":"BB-LON-1","city":"london","votes":{"tories":120,"labour":200,"libdems":45,"reform":20}}"#,
    r#"{"ballot_box_id":"BB-MAN-1","city":"manchester","votes":{"tories":90,"labour":150,"libdems":30,"reform":10}}"#,
    r#"{"ballot_box_id":"BB-EDI-1","city":"edinburgh","votes":{"tories":50,"labour":80,"libdems":40,"reform":5}}"#,
    r#"{"ballot_box_id":"BB-LON-1","city":"london","revision":2,"reason":"recount","votes":{"tories":121,"labour":200,"libdems":45,"reform":20}}"#,
];

/// The operations each run covers (postReportBatch is ingest's too: the
/// query service answers it 404).
const INGEST_OPERATIONS: [&str; 6] = [
    "postReport",
    "postReportBatch",
    "getHealth",
    "getOpenapi",
    "getReadiness",
    "getMetrics",
];
const QUERY_EXCLUDED_OPERATIONS: [&str; 3] = ["postReport", "postReportBatch", "streamTotals"];

/// `cargo xtask api-fuzz`'s arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// schemathesis's seed (else `API_FUZZ_SEED`, else a random one, printed).
    seed: Option<u64>,
}

/// What one run set up: where it writes, what it fuzzes.
struct Run {
    out: PathBuf,
    spec: PathBuf,
    seed: u64,
    examples: String,
    election: String,
    token: String,
    ingest: String,
    query: String,
}

/// Runs the fuzzing; an error when schemathesis found problems or a service
/// died.
pub fn run(args: &Args) -> anyhow::Result<()> {
    for (program, hint) in [
        ("schemathesis", "install it with: pip install schemathesis"),
        (
            "psql",
            "install it with: apt-get install -y postgresql-client",
        ),
        (
            "redis-cli",
            "install it with: apt-get install -y redis-tools",
        ),
        ("curl", "install it with: apt-get install -y curl"),
    ] {
        if !on_path(program) {
            bail!("api-fuzz: '{program}' is not installed; {hint}");
        }
    }
    let out = PathBuf::from("target/api-fuzz");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize().context("target/api-fuzz")?;
    let base_url = env("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
    let redis_url = env("REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned());
    let pid = std::process::id();
    let database = format!("api_fuzz_{pid}_{}", random() % 32_768);
    let unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let election = format!("api-fuzz-{unix_secs}-{pid}");

    let teardown = Teardown::default();
    let stop = {
        let (teardown, out) = (teardown.clone(), out.clone());
        let (redis, election) = (RedisAddr::parse(&redis_url), election.clone());
        move |failed: bool| {
            // The services stop, then the database is dropped (when it was
            // made), then the election's Redis keys go.
            teardown.run(|| {});
            let _ = redis.delete_election_keys(&election);
            if failed {
                eprintln!("api-fuzz: FAILED (logs and reports in {}/)", out.display());
            }
        }
    };
    teardown.on_signal(130, {
        let stop = stop.clone();
        move || stop(true)
    })?;
    let stores = Stores {
        base_url,
        redis_url,
        database,
    };
    let result = start_and_fuzz(args, &out, &stores, &election, &teardown);
    stop(result.is_err());
    result
}

/// Where the services keep their data.
struct Stores {
    /// The PostgreSQL server's URL (its database is replaced by `database`).
    base_url: String,
    redis_url: String,
    /// The database made for this run.
    database: String,
}

fn start_and_fuzz(
    args: &Args,
    out: &Path,
    stores: &Stores,
    election: &str,
    teardown: &Teardown,
) -> anyhow::Result<()> {
    let spec = env("API_FUZZ_SPEC").unwrap_or_else(|| "docs/openapi.yaml".to_owned());
    let spec =
        std::fs::canonicalize(&spec).with_context(|| format!("the OpenAPI document {spec}"))?;
    let seed = args.seed.map_or_else(seed_from_env, Ok)?;
    let services = Services::start(out, stores, election, teardown)?;
    let run = Run {
        out: out.to_owned(),
        spec,
        seed,
        examples: env("API_FUZZ_EXAMPLES").unwrap_or_else(|| "100".to_owned()),
        election: election.to_owned(),
        token: services.token,
        ingest: services.ingest,
        query: services.query,
    };
    fuzz(&run, &stores.database)
}

/// `API_FUZZ_SEED`, else a random 30-bit seed (as bash's
/// `RANDOM * 32768 + RANDOM` drew).
fn seed_from_env() -> anyhow::Result<u64> {
    match env("API_FUZZ_SEED") {
        Some(seed) => seed
            .parse()
            .with_context(|| format!("API_FUZZ_SEED={seed} is not a number")),
        None => Ok(random() % (1 << 30)),
    }
}

fn drop_database(base_url: &str, database: &str) {
    let dropped = succeeds(Command::new("psql").args([
        base_url,
        "-qc",
        &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
    ]));
    if !dropped {
        eprintln!("api-fuzz: could not drop database {database}");
    }
}

/// The two services, started on free ports against a database of their own.
struct Services {
    token: String,
    ingest: String,
    query: String,
}

impl Services {
    fn start(
        out: &Path,
        stores: &Stores,
        election: &str,
        teardown: &Teardown,
    ) -> anyhow::Result<Services> {
        let (ingest_bin, query_bin) = build()?;
        let Stores {
            base_url,
            redis_url,
            database,
        } = stores;
        let server = base_url
            .rsplit_once('/')
            .map_or(base_url.as_str(), |(server, _)| server);
        let database_url = format!("{server}/{database}");
        let command = |program: &Path| {
            let mut command = Command::new(program);
            command
                .env("DATABASE_URL", &database_url)
                .env("REDIS_URL", redis_url);
            command
        };

        crate::shell::run(
            Command::new("psql")
                .args([base_url, "-qc", &format!("CREATE DATABASE {database}")])
                .stdout(Stdio::null()),
        )?;
        let (base_url_to_drop, database_to_drop) = (base_url.clone(), database.clone());
        teardown.later(move || drop_database(&base_url_to_drop, &database_to_drop));
        crate::shell::run(command(&ingest_bin).arg("migrate").stdout(Stdio::null()))?;
        let token = output_quietly(command(&ingest_bin).args([
            "token",
            "issue",
            "--election",
            election,
            "--label",
            "api-fuzz",
        ]))?;

        let ingest = format!("127.0.0.1:{}", free_port()?);
        let query = format!("127.0.0.1:{}", free_port()?);
        // Schemathesis sends many made-up tokens from one address: without
        // INGEST_AUTH_FAILURE_RATE=0 the limit on failed authentications
        // (429, documented) would answer most of the run before its requests
        // reach the checks behind it.
        teardown.spawn_logged(
            command(&ingest_bin)
                .arg("serve")
                .env("INGEST_LISTEN_ADDR", &ingest)
                .env("INGEST_AUTH_FAILURE_RATE", "0"),
            &out.join("ingest.log"),
        )?;
        // Generated election ids are many: let the query service follow them
        // all and forget them quickly, so its limit (503) and its Redis reads
        // stay out of it.
        teardown.spawn_logged(
            command(&query_bin)
                .arg("serve")
                .env("QUERY_LISTEN_ADDR", &query)
                .env("MAX_ELECTIONS", "100000")
                .env("IDLE_AFTER", "5s"),
            &out.join("query.log"),
        )?;
        for addr in [&ingest, &query] {
            if !wait_for_http(addr, "/readyz") {
                bail!(
                    "api-fuzz: the service on {addr} did not become ready; see {}/",
                    out.display()
                );
            }
        }
        post_reports(&ingest, election, &token)?;
        Ok(Services {
            token,
            ingest,
            query,
        })
    }
}

/// The two services as the tests' build made them (debug): `ingest`, `query`.
fn build() -> anyhow::Result<(PathBuf, PathBuf)> {
    println!("api-fuzz: building election-ingest and election-query (debug, as the tests do)");
    let built = TestBuild::get()?;
    Ok((
        built.path("bin", "election-ingest")?,
        built.path("bin", "election-query")?,
    ))
}

/// Posts [`REPORTS`], each of which must be answered 201.
fn post_reports(ingest: &str, election: &str, token: &str) -> anyhow::Result<()> {
    let url = format!("http://{ingest}/v1/elections/{election}/reports");
    for body in REPORTS {
        let status = post_json(&url, token, body)?;
        if status != "201" {
            bail!("api-fuzz: posting {body} answered {status}, not 201");
        }
    }
    Ok(())
}

/// The three schemathesis runs, then a check that both services still answer.
fn fuzz(run: &Run, database: &str) -> anyhow::Result<()> {
    println!(
        "api-fuzz: election {}, database {database}, seed {}, {} examples per operation",
        run.election, run.seed, run.examples
    );
    let pinned = pinned_config(run)?;
    let mut failed = false;

    let mut ingest_args = vec!["--config-file".to_owned(), pinned.clone()];
    ingest_args.extend(run_args(run, &run.ingest));
    for operation in INGEST_OPERATIONS {
        ingest_args.extend(["--include-operation-id".to_owned(), operation.to_owned()]);
    }
    ingest_args.extend([
        "-H".to_owned(),
        format!("Authorization: Bearer {}", run.token),
    ]);
    failed |= !schemathesis(run, "ingest", &ingest_args)?;

    let mut query_args = run_args(run, &run.query);
    for operation in QUERY_EXCLUDED_OPERATIONS {
        query_args.extend(["--exclude-operation-id".to_owned(), operation.to_owned()]);
    }
    let mut pinned_args = vec!["--config-file".to_owned(), pinned];
    pinned_args.extend(query_args.iter().cloned());
    failed |= !schemathesis(run, "query-pinned", &pinned_args)?;
    failed |= !schemathesis(run, "query", &query_args)?;

    // The services must still be up and answering after all of it.
    for addr in [&run.ingest, &run.query] {
        if !succeeds(Command::new("curl").args(["-sf", &format!("http://{addr}/healthz")])) {
            bail!(
                "api-fuzz: the service on {addr} died; see {}/",
                run.out.display()
            );
        }
    }
    if failed {
        bail!(
            "api-fuzz: schemathesis found problems (above; JUnit reports in {}/)",
            run.out.display()
        );
    }
    println!();
    println!(
        "api-fuzz: no 5xx and every answer matched {} (seed {})",
        run.spec.display(),
        run.seed
    );
    Ok(())
}

/// `run <spec> --url <service>` and the options every run shares. One
/// worker: with two, Python 3.11's `ast` (hypothesis describes strategies by
/// parsing their source) fails now and then with "AST constructor recursion
/// depth mismatch", a CPython bug of parsing in two threads at once, which
/// schemathesis reports as an error of whichever operation hit it.
fn run_args(run: &Run, service: &str) -> Vec<String> {
    let checks = env("API_FUZZ_CHECKS").unwrap_or_else(|| CHECKS.to_owned());
    let exclude = env("API_FUZZ_EXCLUDE_CHECKS").unwrap_or_else(|| EXCLUDED_CHECKS.to_owned());
    let seed = run.seed.to_string();
    let url = format!("http://{service}");
    [
        "run",
        &run.spec.to_string_lossy(),
        "--url",
        &url,
        "--checks",
        &checks,
        "--exclude-checks",
        &exclude,
        "--max-examples",
        &run.examples,
        "--seed",
        &seed,
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--no-color",
        "--suppress-health-check",
        "all",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Pins the operations' election path parameter through a config file
/// (schemathesis has no command-line flag for it); its path.
fn pinned_config(run: &Run) -> anyhow::Result<String> {
    let path = run.out.join("pinned.toml");
    std::fs::write(
        &path,
        format!("[parameters]\n\"path.election\" = \"{}\"\n", run.election),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_string_lossy().into_owned())
}

/// One schemathesis run, reports named after it; whether it passed.
fn schemathesis(run: &Run, name: &str, args: &[String]) -> anyhow::Result<bool> {
    println!();
    println!("=== schemathesis: {name}");
    let report = |ext: &str| {
        run.out
            .join(format!("{name}.{ext}"))
            .to_string_lossy()
            .into_owned()
    };
    // From the output folder, so schemathesis keeps its crash cache
    // (.schemathesis/) there.
    let status = Command::new("schemathesis")
        .args(args)
        .args(["--report", "junit,har", "--report-junit-path"])
        .arg(report("xml"))
        .arg("--report-har-path")
        .arg(report("har"))
        .current_dir(&run.out)
        .status()
        .context("running schemathesis")?;
    Ok(status.success())
}
