//! `rampart events`: search, tail, timeline and import, against the store in a
//! data dir or a running server's API.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use rampart_events::remote::RemoteClient;
use rampart_events::render::{detail_width, flat_line, ocsf_line, parse_line, row, table};
use rampart_events::store::{Cursor, SearchRequest};
use rampart_events::time_range::{parse_instant, parse_span};
use rampart_events::{db_path, parse_query, Event, EventsConfig, Pipeline, StoreReader};

use super::state::DataDirArgs;

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    command: EventsCommand,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Search events, newest first: `rampart events search 'user = alice and action = block' --since 1h`.
    Search(SearchArgs),
    /// Print matching events as they are stored (Ctrl-C to stop).
    Tail(TailArgs),
    /// Everything one device did around a time or an alert, oldest first, the alert marked `>`.
    Timeline(TimelineArgs),
    /// Store OCSF events from an NDJSON file (e.g. a file sink's output); `-` reads stdin.
    Import(ImportArgs),
}

/// Where events come from: the local store, or a running server.
#[derive(Debug, Args)]
struct Source {
    /// Data directory holding events.db (used unless --server is given).
    #[command(flatten)]
    dir: DataDirArgs,
    /// API base URL of a running server, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "RAMPART_SERVER")]
    server: Option<String>,
    /// Admin token for --server (DATA_DIR/admin.token on the server).
    #[arg(long, env = "RAMPART_TOKEN", requires = "server")]
    token: Option<String>,
    /// Extra PEM roots to trust for an https --server.
    #[arg(long, requires = "server")]
    server_ca: Option<PathBuf>,
    /// The fleet's PostgreSQL event store (`[fleet] postgres` of the server),
    /// e.g. postgresql://rampart@10.0.0.6/rampart: search every gateway's events.
    #[arg(long, env = "RAMPART_FLEET_STORE", conflicts_with = "server")]
    fleet_store: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    /// Aligned columns that fit the terminal.
    Table,
    /// One flat JSON object per line (the query fields).
    Json,
    /// One OCSF document per line.
    Ocsf,
}

#[derive(Debug, Args)]
struct SearchArgs {
    /// Query, e.g. `user = alice and category in (news, gambling)`; empty matches all.
    #[arg(default_value = "")]
    query: String,
    /// Only events newer than this span (15m, 2h, 7d).
    #[arg(long, conflicts_with = "from")]
    since: Option<String>,
    /// Start time, RFC 3339 (inclusive).
    #[arg(long)]
    from: Option<String>,
    /// End time, RFC 3339 (exclusive).
    #[arg(long, alias = "until")]
    to: Option<String>,
    /// Most events to print.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(flatten)]
    source: Source,
}

#[derive(Debug, Args)]
struct TailArgs {
    #[arg(default_value = "")]
    query: String,
    /// Events printed from before now when starting.
    #[arg(long, default_value_t = 10)]
    last: usize,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Stop after printing this many new events (scripts and tests).
    #[arg(long)]
    count: Option<usize>,
    #[command(flatten)]
    source: Source,
}

#[derive(Debug, Args)]
struct TimelineArgs {
    /// Device id (or host name) to follow.
    #[arg(
        long,
        required_unless_present_any = ["alert", "user"],
        conflicts_with_all = ["alert", "user"]
    )]
    device: Option<String>,
    /// User to follow: everything the user did, with or without an agent (proxy
    /// users who authenticate with a password have no device).
    #[arg(long, value_name = "U", conflicts_with = "alert")]
    user: Option<String>,
    /// Centre time, RFC 3339.
    #[arg(long, conflicts_with = "alert")]
    around: Option<String>,
    /// Centre on this alert (its device and time).
    #[arg(long)]
    alert: Option<String>,
    /// Span either side.
    #[arg(long, default_value = "5m")]
    window: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(flatten)]
    source: Source,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// NDJSON file of OCSF events, or `-` for stdin.
    file: PathBuf,
    #[command(flatten)]
    dir: DataDirArgs,
}

pub fn run(args: EventsArgs) -> Result<ExitCode> {
    match args.command {
        EventsCommand::Search(a) => search(a),
        EventsCommand::Tail(a) => tail(a),
        EventsCommand::Timeline(a) => timeline(a),
        EventsCommand::Import(a) => import(a),
    }
}

enum Backend {
    Local(StoreReader),
    Remote(RemoteClient),
    /// The fleet store, with the runtime its client runs on.
    Fleet(rampart_fleet::pg::FleetStore, tokio::runtime::Runtime),
}

fn backend(s: &Source) -> Result<Backend> {
    if let Some(url) = &s.fleet_store {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let store = runtime
            .block_on(rampart_fleet::pg::FleetStore::connect(url))
            .map_err(|e| anyhow!("the fleet store at {url}: {e}"))?;
        return Ok(Backend::Fleet(store, runtime));
    }
    match &s.server {
        Some(url) => {
            let token = s
                .token
                .as_deref()
                .ok_or_else(|| anyhow!("--server needs --token (or RAMPART_TOKEN)"))?;
            Ok(Backend::Remote(RemoteClient::new(
                url,
                token,
                s.server_ca.as_deref(),
            )?))
        }
        None => Ok(Backend::Local(StoreReader::open(&db_path(
            &s.dir.resolve()?,
        ))?)),
    }
}

/// Parse a query, or explain where it is wrong with a caret under the column.
fn query(text: &str) -> Result<rampart_events::Query> {
    parse_query(text).map_err(|e| anyhow!("{}", e.render(text)))
}

fn width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(120)
}

fn print(events: &[Event], format: Format, marked: Option<&str>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Table => {
            if events.is_empty() {
                writeln!(out, "no events")?;
            } else {
                write!(out, "{}", table(events, width(), marked))?;
            }
        }
        Format::Json => {
            for e in events {
                let is_marked = marked == Some(e.id().to_string().as_str());
                writeln!(out, "{}", flat_line(e, is_marked))?;
            }
        }
        Format::Ocsf => {
            for e in events {
                writeln!(out, "{}", ocsf_line(e))?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn search(a: SearchArgs) -> Result<ExitCode> {
    let parsed = query(&a.query)?;
    let from_ms = match (&a.since, &a.from) {
        (Some(s), _) => Some(
            rampart_events::now_ms()
                - parse_span(s)
                    .map_err(|e| anyhow!("--since: {e}"))?
                    .as_millis() as i64,
        ),
        (None, Some(f)) => Some(parse_instant(f).map_err(|e| anyhow!("--from: {e}"))?),
        (None, None) => None,
    };
    let to_ms =
        a.to.as_deref()
            .map(parse_instant)
            .transpose()
            .map_err(|e| anyhow!("--to: {e}"))?;
    let limit = a.limit.max(1);
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    // Page through until `limit` (the API caps a page at 1000).
    let backend = backend(&a.source)?;
    while events.len() < limit {
        let want = (limit - events.len()).min(1000);
        let page = match &backend {
            Backend::Local(r) => r.search(&SearchRequest {
                query: parsed.clone(),
                from_ms,
                to_ms,
                limit: want,
                cursor: cursor.as_deref().map(Cursor::parse).transpose()?,
            })?,
            Backend::Remote(c) => c.search(&a.query, from_ms, to_ms, want, cursor.as_deref())?,
            Backend::Fleet(store, runtime) => runtime.block_on(store.search(&SearchRequest {
                query: parsed.clone(),
                from_ms,
                to_ms,
                limit: want,
                cursor: cursor.as_deref().map(Cursor::parse).transpose()?,
            }))?,
        };
        events.extend(page.events);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    print(&events, a.format, None)?;
    Ok(ExitCode::SUCCESS)
}

fn tail(a: TailArgs) -> Result<ExitCode> {
    let parsed = query(&a.query)?;
    let backend = backend(&a.source)?;
    let mut printed = 0usize;
    let mut header = a.format == Format::Table;
    let mut emit = |events: Vec<Event>| -> Result<bool> {
        for e in events {
            if header {
                // Header once, then one row per event as it arrives.
                let t = table(&[], width(), None);
                print!("{t}");
                header = false;
            }
            match a.format {
                Format::Table => println!("{}", row(&e, detail_width(width()), None)),
                Format::Json => println!("{}", flat_line(&e, false)),
                Format::Ocsf => println!("{}", ocsf_line(&e)),
            }
            printed += 1;
            if a.count.is_some_and(|c| printed >= c) {
                std::io::stdout().flush()?;
                return Ok(true);
            }
        }
        std::io::stdout().flush()?;
        Ok(false)
    };
    match backend {
        Backend::Fleet(store, runtime) => {
            let mut last_seq = runtime.block_on(store.last_seq())?;
            if a.last > 0 {
                let page = runtime.block_on(store.search(&SearchRequest {
                    query: parsed.clone(),
                    limit: a.last,
                    ..Default::default()
                }))?;
                let mut recent = page.events;
                recent.reverse();
                if emit(recent)? {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            loop {
                let batch = runtime.block_on(store.after(last_seq, &parsed, 1000))?;
                if let Some((s, _)) = batch.last() {
                    last_seq = *s;
                }
                if emit(batch.into_iter().map(|(_, e)| e).collect())? {
                    return Ok(ExitCode::SUCCESS);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        Backend::Local(r) => {
            let mut last_seq = r.last_seq()?;
            if a.last > 0 {
                let page = r.search(&SearchRequest {
                    query: parsed.clone(),
                    limit: a.last,
                    ..Default::default()
                })?;
                let mut recent = page.events;
                recent.reverse();
                if emit(recent)? {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            loop {
                let batch = r.after(last_seq, &parsed, 1000)?;
                if let Some((s, _)) = batch.last() {
                    last_seq = *s;
                }
                if emit(batch.into_iter().map(|(_, e)| e).collect())? {
                    return Ok(ExitCode::SUCCESS);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        Backend::Remote(c) => {
            // Poll from the newest time seen; ids at that same millisecond are remembered to skip repeats.
            let first = c.search(&a.query, None, None, a.last.max(1), None)?;
            let mut since = first
                .events
                .first()
                .map_or(rampart_events::now_ms(), |e| e.time);
            let mut seen: std::collections::HashSet<String> = first
                .events
                .iter()
                .filter(|e| e.time == since)
                .map(|e| e.id().to_string())
                .collect();
            let mut recent = first.events;
            recent.truncate(a.last);
            recent.reverse();
            if a.last > 0 && emit(recent)? {
                return Ok(ExitCode::SUCCESS);
            }
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let page = c.search(&a.query, Some(since), None, 1000, None)?;
                let mut fresh: Vec<Event> = page
                    .events
                    .into_iter()
                    .filter(|e| !seen.contains(&e.id().to_string()))
                    .collect();
                fresh.reverse();
                if let Some(newest) = fresh.iter().map(|e| e.time).max() {
                    if newest > since {
                        since = newest;
                        seen.clear();
                    }
                }
                for e in fresh.iter().filter(|e| e.time == since) {
                    seen.insert(e.id().to_string());
                }
                if emit(fresh)? {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
}

fn timeline(a: TimelineArgs) -> Result<ExitCode> {
    let window = parse_span(&a.window).map_err(|e| anyhow!("--window: {e}"))?;
    let window_ms = window.as_millis() as i64;
    let backend = backend(&a.source)?;
    let (events, marked) = if let Some(alert) = &a.alert {
        let found = match &backend {
            Backend::Local(r) => r.alert_timeline(alert, window_ms)?,
            Backend::Remote(c) => c.alert_timeline(alert, &a.window)?,
            Backend::Fleet(store, runtime) => {
                runtime.block_on(store.alert_timeline(alert, window_ms))?
            }
        };
        let (alert_event, events) = found.ok_or_else(|| anyhow!("no alert with id {alert}"))?;
        (events, Some(alert_event.id().to_string()))
    } else {
        let around = match &a.around {
            Some(t) => parse_instant(t).map_err(|e| anyhow!("--around: {e}"))?,
            None => rampart_events::now_ms(),
        };
        let (from, to) = (around - window_ms, around + window_ms);
        let (field, value) = match (&a.device, &a.user) {
            (Some(device), _) => ("device", device.as_str()),
            (None, Some(user)) => ("user", user.as_str()),
            (None, None) => bail!("--device or --user is required without --alert"),
        };
        let events = match (&backend, field) {
            (Backend::Local(r), "device") => r.timeline(value, from, to, 100_000)?,
            _ => {
                let q = format!("{field} = {}", quoted(value));
                window_events(&backend, &q, from, to)?
            }
        };
        (events, None)
    };
    print(&events, a.format, marked.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

/// A query literal: the value in double quotes, escaped.
fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Every event matching `q` from `from` to `to` (inclusive), oldest first, page by
/// page: a timeline must not stop at one page.
fn window_events(backend: &Backend, q: &str, from: i64, to: i64) -> Result<Vec<Event>> {
    let mut all = Vec::new();
    match backend {
        Backend::Fleet(store, runtime) => {
            let parsed = query(q)?;
            let mut cursor = None;
            loop {
                let page = runtime.block_on(store.search(&SearchRequest {
                    query: parsed.clone(),
                    from_ms: Some(from),
                    to_ms: Some(to.saturating_add(1)),
                    limit: 1000,
                    cursor,
                }))?;
                all.extend(page.events);
                match page.next_cursor {
                    Some(text) => cursor = Some(Cursor::parse(&text)?),
                    None => break,
                }
            }
        }
        Backend::Local(r) => {
            let parsed = query(q)?;
            let mut cursor = None;
            loop {
                let page = r.search(&SearchRequest {
                    query: parsed.clone(),
                    from_ms: Some(from),
                    to_ms: Some(to.saturating_add(1)),
                    limit: 1000,
                    cursor,
                })?;
                all.extend(page.events);
                match page.next_cursor {
                    Some(text) => cursor = Some(Cursor::parse(&text)?),
                    None => break,
                }
            }
        }
        Backend::Remote(c) => {
            let mut cursor = None;
            loop {
                let page = c.search(q, Some(from), Some(to + 1), 1000, cursor.as_deref())?;
                all.extend(page.events);
                match page.next_cursor {
                    Some(cur) => cursor = Some(cur),
                    None => break,
                }
            }
        }
    }
    all.reverse();
    Ok(all)
}

fn import(a: ImportArgs) -> Result<ExitCode> {
    let reader: Box<dyn BufRead> = if a.file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&a.file).with_context(|| format!("{}", a.file.display()))?,
        ))
    };
    let config = EventsConfig {
        // Imported events keep their own times: age-based retention would drop old archives.
        max_age: None,
        ..EventsConfig::default()
    };
    let (pipeline, sender) = Pipeline::start(&a.dir.resolve()?, &config)?;
    let stats = pipeline.stats();
    let mut sent = 0u64;
    let mut reported = 0u64;
    let mut last_report = std::time::Instant::now();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", a.file.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = parse_line(line.as_bytes())
            .map_err(|e| anyhow!("{}: line {}: {e}", a.file.display(), n + 1))?;
        // Import is a bulk load: wait for room rather than let the queue overflow.
        while stats.queued() > (config.queue_size as u64) / 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        sender.send(event);
        sent += 1;
        if last_report.elapsed() >= Duration::from_millis(100) {
            reported = report(&stats, reported)?;
            last_report = std::time::Instant::now();
        }
    }
    while !pipeline.wait_stored(sent, Duration::from_millis(100)) {
        reported = report(&stats, reported)?;
        if stats.snapshot().dropped > 0 {
            bail!("{} events could not be queued", stats.snapshot().dropped);
        }
    }
    pipeline.close();
    report(&stats, reported)?;
    Ok(ExitCode::SUCCESS)
}

/// Print `stored N` when N grew: a line is printed only once N events are committed.
fn report(stats: &rampart_events::PipelineStats, last: u64) -> Result<u64> {
    let now = stats.stored.load(std::sync::atomic::Ordering::Relaxed);
    if now > last {
        let mut out = std::io::stdout().lock();
        writeln!(out, "stored {now}")?;
        out.flush()?;
    }
    Ok(now.max(last))
}
