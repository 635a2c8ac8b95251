//! The subcommands: `migrate`, `serve`, `token issue|revoke|list`,
//! `election load|show|certify`.

use std::sync::Arc;

use anyhow::{Context, bail};
use election_core::{
    BallotBoxId, DefinitionLookup, DefinitionVersion, ElectionId, Lookup, StoreError,
};
use election_http::ServeConfig;
use election_http::health::ReadyCheck;
use election_http::layers::CorsOrigins;
use election_http::redact;
use store_pg::{PgLog, PgPool};
use store_redis::RedisTally;

use crate::auth::{self, Scope, TokenLookup};
use crate::batcher::BatchConfig;
use crate::cli::{Database, Election, Serve, Token};
use crate::limit::RateLimit;
use crate::{Services, Settings};

/// `election-ingest migrate`.
pub fn migrate(database: &Database) -> anyhow::Result<()> {
    let pool = database.connect(1)?;
    let applied = store_pg::migrate(&pool).context("applying migrations")?;
    if applied.is_empty() {
        println!("database schema is up to date");
    } else {
        for version in applied {
            println!("applied migration {version}");
        }
    }
    Ok(())
}

/// Looks tokens up in PostgreSQL.
pub struct PgTokens(pub PgPool);

impl TokenLookup for PgTokens {
    fn find(&self, sha256: &[u8; 32]) -> Result<Option<Scope>, StoreError> {
        let Some(record) = store_pg::tokens::find(&self.0, sha256)? else {
            return Ok(None);
        };
        if record.revoked_at.is_some() {
            return Ok(None);
        }
        // Ids were validated when the token was issued; a row that no longer
        // parses is treated as unknown rather than trusted.
        let Ok(election) = ElectionId::parse(&record.election_id) else {
            return Ok(None);
        };
        let ballot_box = match record.ballot_box_id.as_deref().map(BallotBoxId::parse) {
            None => None,
            Some(Ok(ballot_box)) => Some(ballot_box),
            Some(Err(_)) => return Ok(None),
        };
        Ok(Some(Scope {
            election,
            ballot_box,
        }))
    }
}

/// Looks election definitions up in PostgreSQL.
pub struct PgDefinitions(pub PgPool);

impl DefinitionLookup for PgDefinitions {
    fn find(
        &self,
        election: &ElectionId,
        known: Option<DefinitionVersion>,
    ) -> Result<Lookup, StoreError> {
        Ok(store_pg::definitions::find_if_changed(
            &self.0, election, known,
        )?)
    }
}

/// What `/readyz` checks: PostgreSQL answers. Ingest is ready without
/// Redis: it still records every report durably and answers 202, and the
/// reprocessor counts them later; a load balancer that pulled ingest when
/// Redis fails would refuse reports exactly when they must be recorded.
/// Redis's state (down, or a `maxmemory-policy` that may evict keys) is
/// named in a note, as on `/healthz` and in `ingest_redis_up`.
pub fn ready_check(pg: PgPool, tally: Arc<RedisTally>) -> ReadyCheck {
    election_wiring::ready::postgres(
        pg,
        tally,
        "reports are recorded and answered 202, counted once it is back",
    )
}

/// `election-ingest serve`.
pub async fn serve(args: Serve) -> anyhow::Result<()> {
    if args.header_timeout.is_zero() {
        bail!("--header-timeout (HTTP_HEADER_TIMEOUT) must be more than 0");
    }
    if args.body_timeout.is_zero() {
        bail!("--body-timeout (INGEST_BODY_TIMEOUT) must be more than 0");
    }
    let largest_body = crate::bulk::MAX_BATCH_BYTES.div_ceil(1 << 20);
    if (args.bodies_in_flight_mib as usize) < largest_body {
        bail!(
            "--bodies-in-flight-mib (INGEST_BODIES_IN_FLIGHT_MIB) must be at least {largest_body}, \
             the largest bulk body, or no bulk request could ever be read"
        );
    }
    if args.max_in_flight == 0 || args.max_recording == 0 {
        bail!(
            "--max-in-flight (MAX_IN_FLIGHT) and --max-recording (MAX_RECORDING) must be more than 0"
        );
    }
    let rate_limit = RateLimit::from_config(args.token_rate, args.token_burst)
        .map_err(anyhow::Error::msg)
        .context("--token-rate")?;
    let auth_failures = RateLimit::from_config(args.auth_failure_rate, args.auth_failure_burst)
        .map_err(anyhow::Error::msg)
        .context("--auth-failure-rate (INGEST_AUTH_FAILURE_RATE)")?;
    let shared = &args.shared;
    let pg = args
        .database
        .connect_checked_blocking(shared.pools.pg_pool_size)
        .await?;
    let tally = shared.redis.open(&shared.pools)?;
    let log = Arc::new(PgLog::new(pg.clone()));
    let ready = ready_check(pg.clone(), Arc::clone(&tally));
    let serving = shared.listen.bind().await?;
    tracing::info!(
        listen.addr = %serving.local_addr()?,
        database.url = %redact(&args.database.database_url),
        redis.url = %redact(&shared.redis.redis_url),
        batch.size = args.batch_size,
        batch.linger = ?args.batch_linger,
        http.header_timeout = ?args.header_timeout,
        http.body_timeout = ?args.body_timeout,
        http.bodies_in_flight_mib = args.bodies_in_flight_mib,
        rate_limit.per_second = rate_limit.map_or(0.0, |limit| limit.per_second),
        rate_limit.burst = rate_limit.map_or(0, |limit| limit.burst),
        trusted_proxies = %args.trusted_proxies,
        "election-ingest serving"
    );
    let services = Services {
        log,
        redis: Some(Arc::clone(&tally)),
        tally,
        tokens: Arc::new(PgTokens(pg.clone())),
        definitions: Arc::new(PgDefinitions(pg)),
        ready,
    };
    let settings = Settings {
        auth_failures,
        trusted_proxies: args.trusted_proxies,
        batch: BatchConfig {
            batch_size: args.batch_size,
            linger: args.batch_linger,
            max_in_flight: args.max_in_flight,
            max_recording: args.max_recording,
            queue: args.batch_size * args.max_in_flight * 4,
        },
        token_cache_ttl: args.token_cache_ttl,
        definition_cache_ttl: args.definition_cache_ttl,
        serve: ServeConfig {
            header_read_timeout: args.header_timeout,
        },
        body_timeout: args.body_timeout,
        bodies_in_flight: (args.bodies_in_flight_mib as usize) << 20,
        rate_limit,
        cors_origins: CorsOrigins::parse(&args.cors_allowed_origins)
            .map_err(|why| anyhow::anyhow!("--cors-allowed-origins: {why}"))?,
    };
    crate::run(serving, services, settings).await?;
    tracing::info!("election-ingest stopped");
    Ok(())
}

/// `election-ingest token ...`.
pub fn token(command: Token) -> anyhow::Result<()> {
    match command {
        Token::Issue {
            database,
            election,
            ballot_box,
            label,
        } => {
            let election = ElectionId::parse(&election).context("--election")?;
            let ballot_box = ballot_box
                .as_deref()
                .map(BallotBoxId::parse)
                .transpose()
                .context("--ballot-box")?;
            let pool = database.connect_checked(1)?;
            let secret = auth::generate();
            let id = store_pg::tokens::insert(
                &pool,
                &auth::hash(&secret),
                election.as_str(),
                ballot_box.as_ref().map(BallotBoxId::as_str),
                label.as_deref(),
            )
            .context("storing the token")?;
            eprintln!(
                "issued token {id} for election {election}{}; it is shown once, below",
                ballot_box
                    .map(|b| format!(", ballot box {b}"))
                    .unwrap_or_default()
            );
            println!("{secret}");
            Ok(())
        }
        Token::Revoke { database, id } => {
            let pool = database.connect(1)?;
            if store_pg::tokens::revoke(&pool, id).context("revoking the token")? {
                println!("revoked token {id}");
                Ok(())
            } else {
                bail!("no active token with id {id}")
            }
        }
        Token::List { database, election } => {
            let pool = database.connect(1)?;
            let tokens =
                store_pg::tokens::list(&pool, election.as_deref()).context("listing tokens")?;
            println!(
                "{:>6}  {:<20} {:<16} {:<25} {:<25} label",
                "id", "election", "ballot box", "created", "revoked"
            );
            for t in tokens {
                println!(
                    "{:>6}  {:<20} {:<16} {:<25} {:<25} {}",
                    t.id,
                    t.election_id,
                    t.ballot_box_id.as_deref().unwrap_or("(any)"),
                    t.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    t.revoked_at
                        .map(|r| r.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                        .unwrap_or_else(|| "-".into()),
                    t.label.as_deref().unwrap_or(""),
                );
            }
            Ok(())
        }
    }
}

/// `election-ingest election ...`.
pub fn election(command: Election) -> anyhow::Result<()> {
    match command {
        Election::Load {
            database,
            check,
            file,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let definition = election_core::Definition::from_toml(&text)
                .map_err(|error| anyhow::anyhow!("{}: {error}", file.display()))?;
            if check {
                println!(
                    "{}: election {} is valid ({} parties, {} cities, {} ballot boxes expected, {} registered)",
                    file.display(),
                    definition.election(),
                    definition.parties().len(),
                    definition.cities().len(),
                    definition.expected_ballot_boxes(),
                    definition.ballot_boxes().len()
                );
                return Ok(());
            }
            let pool = database.connect_checked(1)?;
            let loaded = store_pg::definitions::load(&pool, &definition).map_err(|error| match error {
                store_pg::definitions::LoadError::Refused(refused) => anyhow::anyhow!(
                    "{}: {refused}\nnothing was stored; a definition may add and rename, never remove or move",
                    file.display()
                ),
                other => anyhow::Error::new(other).context("storing the definition"),
            })?;
            match loaded {
                store_pg::definitions::Loaded::Created => println!(
                    "defined election {}: {} parties, {} cities, {} ballot boxes expected, {} registered",
                    definition.election(),
                    definition.parties().len(),
                    definition.cities().len(),
                    definition.expected_ballot_boxes(),
                    definition.ballot_boxes().len()
                ),
                store_pg::definitions::Loaded::Updated(added) => println!(
                    "updated election {}: added {} parties, {} cities, {} ballot boxes; {} ballot boxes expected",
                    definition.election(),
                    added.parties,
                    added.cities,
                    added.ballot_boxes,
                    definition.expected_ballot_boxes()
                ),
            }
            Ok(())
        }
        Election::Show { database, election } => {
            let election = ElectionId::parse(&election).context("election")?;
            let pool = database.connect_checked(1)?;
            let Some(definition) =
                store_pg::definitions::find(&pool, &election).context("reading the definition")?
            else {
                bail!(
                    "election {election} is not defined (it accepts any valid party, city and ballot box)"
                )
            };
            print!("{}", show(&definition));
            Ok(())
        }
        Election::Certify {
            database,
            election,
            city,
            all,
            by,
        } => {
            let election = ElectionId::parse(&election).context("--election")?;
            let city = match (city, all) {
                (Some(city), false) => Some(election_core::CityId::parse(&city).context("--city")?),
                (None, true) => None,
                _ => bail!("give exactly one of --city C or --all"),
            };
            let by = by.map(|by| by.trim().to_owned()).unwrap_or_default();
            if by.is_empty() || by.chars().any(char::is_control) || by.chars().count() > 200 {
                bail!("--by must name who certifies (1 to 200 printable characters)");
            }
            let pool = database.connect_checked(1)?;
            let cities = city.map(|city| vec![city]);
            let certified =
                store_pg::definitions::certify(&pool, &election, cities.as_deref(), &by)
                    .with_context(|| format!("certifying election {election}"))?;
            print!("{}", certified_text(&election, &certified));
            Ok(())
        }
    }
}

/// The text `election certify` prints.
pub fn certified_text(
    election: &ElectionId,
    certified: &store_pg::definitions::Certified,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (city, how) in &certified.now {
        let _ = writeln!(
            out,
            "certified city {} of election {election} (by {}, at {})",
            city.as_str(),
            how.by,
            how.at
        );
    }
    for (city, how) in &certified.before {
        let _ = writeln!(
            out,
            "city {} of election {election} was certified already (by {}, at {})",
            city.as_str(),
            how.by,
            how.at
        );
    }
    out
}

/// The text `election show` prints.
pub fn show(definition: &election_core::Definition) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "election {}: {}",
        definition.election(),
        definition.name()
    );
    let _ = writeln!(out, "parties ({}):", definition.parties().len());
    for party in definition.parties() {
        let _ = writeln!(
            out,
            "  {:<20} {}  {}",
            party.id.as_str(),
            party.colour,
            party.name
        );
    }
    let mut registered: std::collections::HashMap<&election_core::CityId, usize> =
        std::collections::HashMap::new();
    for city in definition.ballot_boxes().values() {
        *registered.entry(city).or_default() += 1;
    }
    let _ = writeln!(
        out,
        "cities ({}), {} ballot boxes expected, {} registered:",
        definition.cities().len(),
        definition.expected_ballot_boxes(),
        definition.ballot_boxes().len()
    );
    for city in definition.cities() {
        let _ = writeln!(
            out,
            "  {:<20} expected {:>7}  registered {:>7}  {}",
            city.id.as_str(),
            city.expected_ballot_boxes,
            registered.get(&city.id).copied().unwrap_or(0),
            city.name
        );
        if let Some(how) = definition.certification(&city.id) {
            let _ = writeln!(out, "  {:<20} certified by {} at {}", "", how.by, how.at);
        }
    }
    out
}
