//! `cargo xtask demo` (`just demo`): the whole system on this machine, the
//! seed article's three-city example, then a simulated election night,
//! until Ctrl-C.
//!
//! PostgreSQL and Redis: the ones `DATABASE_URL` / `REDIS_URL` point at
//! (default: the local standard ports) if they answer, otherwise throwaway
//! instances started here from the installed server binaries, with their
//! data under `target/demo/`. The demo uses its own database (election_demo)
//! on that PostgreSQL, recreated each run, and resets the Redis keys of its
//! two elections (2025 and demo-night) only.
//!
//! Settings: `DEMO_BOXES` (20000), `DEMO_CITIES` (300), `DEMO_NIGHT_SECS`
//! (90), `INGEST_PORT` (8080), `QUERY_PORT` (8081), `REPROCESSOR_PORT`
//! (8082), `DATABASE_URL`, `REDIS_URL`, `CARGO_TARGET_DIR` (where the release
//! binaries are built).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::definition::{self, Sizes};
use crate::shell::{
    RedisAddr, Teardown, cargo, env, free_port, on_path, output, output_quietly, post_json, redact,
    succeeds, target_dir, wait_for_http,
};

const DEMO_DIR: &str = "target/demo";
const LOGS: &str = "target/demo/logs";
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The seed article's three ballot boxes.
const SEED_REPORTS: [(&str, &str); 3] = [
    (
        "london",
        r#"{"ballot_box_id":"BB-LON-1","city":"london","votes":{"tories":120,"labour":200,"libdems":45,"reform":20}}"#,
    ),
    (
        "manchester",
        r#"{"ballot_box_id":"BB-MAN-1","city":"manchester","votes":{"tories":90,"labour":150,"libdems":30,"reform":10}}"#,
    ),
    (
        "edinburgh",
        r#"{"ballot_box_id":"BB-EDI-1","city":"edinburgh","votes":{"tories":50,"labour":80,"libdems":40,"reform":5}}"#,
    ),
];
const SEED_PARTIES: [&str; 4] = ["tories", "labour", "libdems", "reform"];

/// The demo's settings, from the environment.
struct Settings {
    boxes: u64,
    cities: u64,
    night_secs: String,
    ingest: String,
    query: String,
    reprocessor: String,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let number = |name: &str, default: u64| -> anyhow::Result<u64> {
            env(name).map_or(Ok(default), |value| {
                value
                    .parse()
                    .with_context(|| format!("{name}={value} is not a number"))
            })
        };
        let addr = |name: &str, default: &str| {
            format!(
                "127.0.0.1:{}",
                env(name).unwrap_or_else(|| default.to_owned())
            )
        };
        Ok(Settings {
            boxes: number("DEMO_BOXES", 20_000)?,
            cities: number("DEMO_CITIES", 300)?,
            night_secs: env("DEMO_NIGHT_SECS").unwrap_or_else(|| "90".to_owned()),
            ingest: addr("INGEST_PORT", "8080"),
            query: addr("QUERY_PORT", "8081"),
            reprocessor: addr("REPROCESSOR_PORT", "8082"),
        })
    }
}

/// Runs the demo until Ctrl-C (or SIGTERM), then stops everything it started.
pub fn run() -> anyhow::Result<()> {
    std::fs::create_dir_all(LOGS).with_context(|| format!("creating {LOGS}"))?;
    let settings = Settings::from_env()?;
    let teardown = Teardown::default();
    let stop = {
        let teardown = teardown.clone();
        move || {
            teardown.run(|| println!("\nstopping the demo..."));
            println!("stopped. Logs are in {LOGS}/.");
        }
    };
    teardown.on_signal(0, stop.clone())?;
    let result = run_until_stopped(&settings, &teardown);
    stop();
    result
}

fn run_until_stopped(settings: &Settings, teardown: &Teardown) -> anyhow::Result<()> {
    need("curl", "curl")?;
    need("redis-cli", "redis-tools")?;
    need("psql", "postgresql-client")?;
    let database_url = demo_database(teardown)?;
    let redis_url = demo_redis(teardown)?;

    println!("building (release)...");
    crate::shell::run(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "election-ingest",
        "-p",
        "election-query",
        "-p",
        "election-reprocessor",
        "-p",
        "election-loadgen",
    ]))?;
    let bins = Bins {
        dir: target_dir().join("release"),
        database_url,
        redis_url,
    };
    output(&mut bins.command("election-ingest", &["migrate"]))?;
    let seed_token = bins.issue_token("2025", "demo: seed")?;
    let night_token = bins.issue_token("demo-night", "demo: night")?;
    define_the_night(settings, &bins)?;

    start_services(settings, &bins, teardown)?;
    println!();
    println!(
        "  dashboard (election night):  http://{}/?election=demo-night",
        settings.query
    );
    println!(
        "  dashboard (the seed example): http://{}/?election=2025",
        settings.query
    );
    println!();
    post_the_seed(settings, &bins, &seed_token)?;
    simulate_the_night(settings, &bins, &night_token)?;
    certify_and_flag(settings, &bins, &night_token)?;
    println!();
    println!("the night is over; the services keep running. Press Ctrl-C to stop everything.");
    // The Ctrl-C / SIGTERM handler stops everything and exits.
    loop {
        std::thread::park();
    }
}

fn need(program: &str, package: &str) -> anyhow::Result<()> {
    if !on_path(program) {
        bail!("demo: '{program}' is not installed. On Debian: apt-get install -y {package}");
    }
    Ok(())
}

fn psql_answers(url: &str) -> bool {
    succeeds(Command::new("psql").args([url, "-Atqc", "select 1"]))
}

/// The demo's database (recreated), on the PostgreSQL `DATABASE_URL` names
/// if it answers, else on a throwaway one; its URL.
fn demo_database(teardown: &Teardown) -> anyhow::Result<String> {
    let mut base_url = env("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
    if psql_answers(&base_url) {
        let shown = base_url.split('?').next().unwrap_or(&base_url);
        println!("using PostgreSQL at {}", redact(shown));
    } else {
        base_url = throwaway_postgres(&base_url, teardown)?;
    }
    crate::shell::run(
        Command::new("psql")
            .args([&base_url, "-qc", "DROP DATABASE IF EXISTS election_demo"])
            .args(["-qc", "CREATE DATABASE election_demo"])
            .stdout(Stdio::null()),
    )?;
    let server = base_url
        .rsplit_once('/')
        .map_or(base_url.as_str(), |(server, _)| server);
    Ok(format!("{server}/election_demo"))
}

/// Starts a PostgreSQL of the demo's own (data in target/demo/pg) and
/// returns its URL; it is stopped with the demo.
fn throwaway_postgres(base_url: &str, teardown: &Teardown) -> anyhow::Result<String> {
    let newest_bin = newest_postgres_bin();
    if newest_bin.is_none() && !on_path("initdb") {
        bail!(
            "demo: no PostgreSQL answers at {base_url} and none is installed. Install it with\n  apt-get install -y postgresql   (or set DATABASE_URL)"
        );
    }
    let program = |name: &str| {
        newest_bin
            .as_ref()
            .map_or_else(|| PathBuf::from(name), |bin| bin.join(name))
    };
    let port = free_port()?;
    let data = format!("{DEMO_DIR}/pg");
    println!("starting a throwaway PostgreSQL on port {port} (data in {data})");
    if Path::new(&data).exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("removing {data}"))?;
    }
    // initdb refuses to run as root; run it as the postgres user when we are root.
    let as_root = output(Command::new("id").arg("-u"))? == "0";
    let postgres_command = |name: &str| {
        if as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program(name));
            command
        } else {
            Command::new(program(name))
        }
    };
    if as_root {
        std::fs::create_dir_all(&data).with_context(|| format!("creating {data}"))?;
        crate::shell::run(Command::new("chown").args(["postgres", &data]))?;
        // The postgres user must be able to reach its data directory.
        let _ = succeeds(Command::new("chmod").args(["o+x", ".", "target", DEMO_DIR]));
    }
    crate::shell::run(
        postgres_command("initdb")
            .args(["-D", &data, "-U", "postgres", "-A", "trust"])
            .stdout(log_file("initdb.log")?),
    )?;
    crate::shell::run(
        postgres_command("pg_ctl")
            .args(["-D", &data, "-o"])
            .arg(format!("-p {port} -k /tmp -c listen_addresses=127.0.0.1"))
            .args(["-l", &format!("{LOGS}/postgres.log"), "-w", "start"])
            .stdout(Stdio::null()),
    )?;
    let pg_ctl = program("pg_ctl");
    teardown.later(move || {
        let _ = succeeds(Command::new(pg_ctl).args(["-D", &data, "-m", "fast", "stop"]));
    });
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

/// The newest `/usr/lib/postgresql/<version>/bin`, if any.
fn newest_postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let bin = entry.path().join("bin");
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|part| part.parse().unwrap_or(0))
                .collect();
            bin.is_dir().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The Redis `REDIS_URL` names with the demo's keys reset, if it answers,
/// else a throwaway one; its URL.
fn demo_redis(teardown: &Teardown) -> anyhow::Result<String> {
    let url = env("REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned());
    let addr = RedisAddr::parse(&url);
    if succeeds(addr.cli().arg("ping")) {
        println!(
            "using Redis at {}:{}; resetting the keys of elections 2025 and demo-night",
            addr.host, addr.port
        );
        for election in ["2025", "demo-night"] {
            addr.delete_election_keys(election)?;
        }
        return Ok(url);
    }
    need("redis-server", "redis-server")?;
    let port = free_port()?.to_string();
    println!("starting a throwaway Redis on port {port}");
    let here = std::env::current_dir().context("the current directory")?;
    crate::shell::run(Command::new("redis-server").args([
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "yes",
        "--logfile",
        &here.join(LOGS).join("redis.log").to_string_lossy(),
        "--dir",
        &here.join(DEMO_DIR).to_string_lossy(),
    ]))?;
    let stop_port = port.clone();
    teardown.later(move || {
        let _ = succeeds(Command::new("redis-cli").args(["-p", &stop_port, "shutdown", "nosave"]));
    });
    Ok(format!("redis://127.0.0.1:{port}"))
}

fn log_file(name: &str) -> anyhow::Result<File> {
    let path = format!("{LOGS}/{name}");
    File::create(&path).with_context(|| format!("creating {path}"))
}

/// The built binaries and the stores they use.
struct Bins {
    dir: PathBuf,
    database_url: String,
    redis_url: String,
}

impl Bins {
    fn command(&self, name: &str, args: &[&str]) -> Command {
        let mut command = Command::new(self.dir.join(name));
        command
            .args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("REDIS_URL", &self.redis_url);
        command
    }

    fn ingest(&self, args: &[&str]) -> anyhow::Result<String> {
        output(&mut self.command("election-ingest", args))
    }

    /// A new token's secret (the notice ingest prints on standard error
    /// about keeping it is not shown).
    fn issue_token(&self, election: &str, label: &str) -> anyhow::Result<String> {
        let args = ["token", "issue", "--election", election, "--label", label];
        output_quietly(&mut self.command("election-ingest", &args))
    }
}

/// Defines demo-night (parties, cities, expected ballot boxes) so the
/// dashboard shows reporting progress. The checked-in file matches the
/// default sizes; other sizes get a definition generated to match loadgen's.
fn define_the_night(settings: &Settings, bins: &Bins) -> anyhow::Result<()> {
    let mut definition = "demo/demo-night.toml".to_owned();
    if settings.boxes != 20_000 || settings.cities != 300 {
        definition = format!("{LOGS}/demo-night.toml");
        let toml = definition::generate(&Sizes {
            boxes: settings.boxes,
            cities: settings.cities,
            parties: 6,
        });
        std::fs::write(&definition, toml).with_context(|| format!("writing {definition}"))?;
    }
    bins.ingest(&["election", "load", &definition])?;
    Ok(())
}

fn start_services(settings: &Settings, bins: &Bins, teardown: &Teardown) -> anyhow::Result<()> {
    let services = [
        (
            "election-ingest",
            "INGEST_LISTEN_ADDR",
            &settings.ingest,
            vec!["serve"],
            "ingest.log",
        ),
        (
            "election-query",
            "QUERY_LISTEN_ADDR",
            &settings.query,
            vec!["serve"],
            "query.log",
        ),
        (
            "election-reprocessor",
            "REPROCESSOR_LISTEN_ADDR",
            &settings.reprocessor,
            vec!["run", "--pending-after", "2s"],
            "reprocessor.log",
        ),
    ];
    for (name, listen_var, addr, args, log) in &services {
        teardown.spawn_logged(
            bins.command(name, args).env(listen_var, addr),
            &Path::new(LOGS).join(log),
        )?;
    }
    for (_, _, addr, _, _) in &services {
        if !wait_for_http(addr, "/healthz") {
            bail!("demo: a service did not start; see {LOGS}/");
        }
    }
    Ok(())
}

/// Posts the seed's three boxes to election 2025 and shows the totals in
/// Redis and from the query service.
fn post_the_seed(settings: &Settings, bins: &Bins, token: &str) -> anyhow::Result<()> {
    let url = format!("http://{}/v1/elections/2025/reports", settings.ingest);
    println!("posting the seed's three ballot boxes to election 2025:");
    for (city, body) in SEED_REPORTS {
        println!("  {city:<10} {}", post_json(&url, token, body)?);
    }
    println!();
    let redis = RedisAddr::parse(&bins.redis_url);
    let get = |key: String| output(redis.cli().args(["GET", &key]));
    println!("national totals (redis-cli GET election:2025:party:<party>):");
    for party in SEED_PARTIES {
        println!(
            "  {party:<8} {}",
            get(format!("election:2025:party:{party}"))?
        );
    }
    println!("city totals (GET election:2025:city:<city>:party:<party>):");
    println!(
        "  {:<11} {:>7} {:>7} {:>8} {:>7}",
        "city", "tories", "labour", "libdems", "reform"
    );
    for (city, _) in SEED_REPORTS {
        let total = |party: &str| get(format!("election:2025:city:{city}:party:{party}"));
        println!(
            "  {city:<11} {:>7} {:>7} {:>8} {:>7}",
            total("tories")?,
            total("labour")?,
            total("libdems")?,
            total("reform")?
        );
    }
    println!();
    let totals_url = format!("http://{}/v1/elections/2025/totals", settings.query);
    println!("  GET {totals_url}");
    println!(
        "  {}",
        output(Command::new("curl").args(["-s", &totals_url]))?
    );
    println!();
    Ok(())
}

/// election-loadgen posts the night (duplicates and corrections among the
/// posts); its failure does not end the demo.
fn simulate_the_night(settings: &Settings, bins: &Bins, token: &str) -> anyhow::Result<()> {
    let Settings {
        boxes,
        cities,
        night_secs,
        ingest,
        ..
    } = settings;
    println!(
        "simulating election night 'demo-night': {boxes} ballot boxes in {cities} cities over {night_secs}s,"
    );
    println!("with duplicate posts and corrections (watch the dashboard)...");
    let ingest_url = format!("http://{ingest}");
    let (boxes, cities) = (boxes.to_string(), cities.to_string());
    let _ = bins
        .command(
            "election-loadgen",
            &[
                "--ingest-url",
                &ingest_url,
                "--election",
                "demo-night",
                "--token",
                token,
                "--boxes",
                &boxes,
                "--cities",
                &cities,
                "--parties",
                "6",
                "--duplicates",
                "0.05",
                "--revisions",
                "0.03",
                "--concurrency",
                "64",
                "--spread-secs",
                night_secs,
                "--progress",
                "--redis-url",
                &bins.redis_url,
            ],
        )
        .status()
        .context("running election-loadgen")?;
    println!();
    Ok(())
}

/// A returning officer certifies one city: the dashboard shows it certified,
/// and any new report for it is refused (409 certified). Corrections that
/// move a box's total by more than 20% are flagged (GET .../flags; ⚑ on the
/// dashboard's city table).
fn certify_and_flag(settings: &Settings, bins: &Bins, token: &str) -> anyhow::Result<()> {
    bins.ingest(&[
        "election",
        "certify",
        "--election",
        "demo-night",
        "--city",
        "city-0000",
        "--by",
        "demo returning officer",
    ])?;
    println!("certified city-0000 of demo-night (its status on the dashboard: certified)");
    let url = format!("http://{}/v1/elections/demo-night/reports", settings.ingest);
    let first = post_json(
        &url,
        token,
        r#"{"ballot_box_id":"DEMO-LATE-1","city":"city-0001","votes":{"party-00":100}}"#,
    )?;
    let correction = post_json(
        &url,
        token,
        r#"{"ballot_box_id":"DEMO-LATE-1","city":"city-0001","revision":2,"reason":"a second ballot bag was found","votes":{"party-00":400}}"#,
    )?;
    println!(
        "a late box in city-0001 and its correction, four times the first count (a flag): {first} {correction}"
    );
    let flags_url = format!("http://{}/v1/elections/demo-night/flags", settings.query);
    let flags = output(Command::new("curl").args(["-s", &flags_url]))?;
    println!(
        "flagged revisions (large corrections, marked ⚑ on the dashboard): {}",
        flags.matches("\"reason\":").count()
    );
    println!("  GET {flags_url}");
    Ok(())
}
