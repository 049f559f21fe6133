//! `kmfctl batch encrypt|decrypt|rewrap --in FILE --out FILE`: JSON lines in,
//! JSON lines out, streamed through EncryptBatch / DecryptBatch / RewrapBatch
//! in bounded chunks (at most [`CHUNK_ITEMS`] items or [`CHUNK_BYTES`] of input
//! per call), so memory stays bounded whatever the file's size. Each input line
//! is one item request in the protobuf JSON mapping; each output line is the
//! matching result, in input order. A line that does not parse is not sent: its
//! result carries an INVALID_ARGUMENT error naming the line. A progress bar
//! runs on stderr when the input is large and stderr is a terminal.

use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::kmfctl::Operator;
use super::print;
use crate::rpc::pb;

/// Items per batch call (the daemon takes up to 10,000).
pub const CHUNK_ITEMS: usize = 1_000;
/// Input bytes per batch call, well under the daemon's 16 MiB message limit.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Inputs at least this large get a progress bar (on a terminal).
const PROGRESS_FROM_BYTES: u64 = 1024 * 1024;

#[derive(Subcommand, Debug)]
pub enum BatchCommand {
    /// Encrypt every line. In: {"plaintext": BASE64, "associatedData": BASE64,
    /// "spec": NAME} per line (spec and associatedData optional; --spec is the
    /// default spec). Out: {"ciphertext": BASE64, "keyId": ID} or
    /// {"error": {"code": N, "message": TEXT}} per line.
    Encrypt {
        #[command(flatten)]
        files: Files,
        /// Spec for lines that name none.
        #[arg(long)]
        spec: Option<String>,
    },
    /// Decrypt every line. In: {"ciphertext": BASE64, "associatedData": BASE64}
    /// per line. Out: {"plaintext": BASE64, "keyId": ID} or {"error": {...}}.
    Decrypt {
        #[command(flatten)]
        files: Files,
    },
    /// Re-encrypt every line under its spec's current key without the
    /// plaintext leaving the daemon. In: as decrypt. Out: {"ciphertext":
    /// BASE64, "keyId": ID, "previousKeyId": ID} or {"error": {...}}.
    Rewrap {
        #[command(flatten)]
        files: Files,
    },
}

#[derive(Args, Debug)]
pub struct Files {
    /// JSON lines to read ("-" for stdin); blank lines are skipped.
    #[arg(long = "in")]
    input: PathBuf,
    /// Where the results go, one JSON line per input line ("-" for stdout).
    #[arg(long = "out")]
    output: PathBuf,
}

/// Runs a batch command; fails (after writing every result) when an item failed.
pub async fn batch(ops: &Operator, cmd: BatchCommand) -> anyhow::Result<()> {
    let summary = match cmd {
        BatchCommand::Encrypt { files, spec } => {
            let spec = spec.unwrap_or_default();
            let parse = move |line: &str| {
                let mut item: pb::EncryptRequest = print::parse_json(line)?;
                if item.spec.is_empty() {
                    item.spec.clone_from(&spec);
                }
                Ok(item)
            };
            stream(&files, parse, |items| encrypt(ops.crypto.clone(), items)).await?
        }
        BatchCommand::Decrypt { files } => {
            stream(&files, print::parse_json, |items| decrypt(ops.crypto.clone(), items)).await?
        }
        BatchCommand::Rewrap { files } => {
            stream(&files, print::parse_json, |items| rewrap(ops.crypto.clone(), items)).await?
        }
    };
    eprintln!("{} item(s), {} failed", summary.items, summary.failed.len());
    if let Some((line, why)) = summary.failed.first() {
        anyhow::bail!("{} of {} item(s) failed; the first, line {line}: {why}", summary.failed.len(), summary.items);
    }
    Ok(())
}

/// The Crypto client (a cheap clone of the channel's handle).
type Crypto = pb::crypto_client::CryptoClient<tonic::transport::Channel>;

/// A result line and whether it carries an error.
type Outcome = (String, Option<String>);

async fn encrypt(mut crypto: Crypto, items: Vec<pb::EncryptRequest>) -> anyhow::Result<Vec<Outcome>> {
    let results = crypto.encrypt_batch(pb::EncryptBatchRequest { items }).await?.into_inner().results;
    results.iter().map(|r| outcome(r, &r.error)).collect()
}

async fn decrypt(mut crypto: Crypto, items: Vec<pb::DecryptRequest>) -> anyhow::Result<Vec<Outcome>> {
    let results = crypto.decrypt_batch(pb::DecryptBatchRequest { items }).await?.into_inner().results;
    results.iter().map(|r| outcome(r, &r.error)).collect()
}

async fn rewrap(mut crypto: Crypto, items: Vec<pb::RewrapRequest>) -> anyhow::Result<Vec<Outcome>> {
    let results = crypto.rewrap_batch(pb::RewrapBatchRequest { items }).await?.into_inner().results;
    results.iter().map(|r| outcome(r, &r.error)).collect()
}

fn outcome<M: prost::Message + prost::Name>(result: &M, error: &Option<pb::ItemError>) -> anyhow::Result<Outcome> {
    Ok((print::json_line(result)?, error.as_ref().map(|e| e.message.clone())))
}

/// What a batch did: items read and the failed ones (line number, why).
struct Summary {
    items: usize,
    failed: Vec<(usize, String)>,
}

/// One line of the current chunk: its number and its item, or why it does not parse.
type Pending<T> = (usize, Result<T, String>);

async fn stream<T, P, C, F>(files: &Files, parse: P, mut call: C) -> anyhow::Result<Summary>
where
    P: Fn(&str) -> anyhow::Result<T>,
    C: FnMut(Vec<T>) -> F,
    F: Future<Output = anyhow::Result<Vec<Outcome>>>,
{
    let (reader, size) = open_input(&files.input)?;
    let mut out = open_output(&files.output)?;
    let bar = (size >= PROGRESS_FROM_BYTES && std::io::stderr().is_terminal()).then(|| progress(size));
    let mut summary = Summary { items: 0, failed: Vec::new() };
    let (mut chunk, mut chunk_bytes): (Vec<Pending<T>>, usize) = (Vec::new(), 0);
    let mut lines = reader.lines().enumerate();
    loop {
        let next = lines.next();
        let done = next.is_none();
        if let Some((index, line)) = next {
            let line = line?;
            if let Some(b) = &bar {
                b.inc(line.len() as u64 + 1);
            }
            if line.trim().is_empty() {
                continue;
            }
            chunk_bytes += line.len();
            chunk.push((index + 1, parse(&line).map_err(|e| format!("line {}: {e:#}", index + 1))));
            if chunk.len() < CHUNK_ITEMS && chunk_bytes < CHUNK_BYTES {
                continue;
            }
        }
        if !chunk.is_empty() {
            let sent = std::mem::take(&mut chunk);
            chunk_bytes = 0;
            send(sent, &mut call, &mut out, &mut summary).await?;
        }
        if done {
            break;
        }
    }
    out.flush()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(summary)
}

/// Sends one chunk's parsed items in one call and writes a result line for
/// every line of the chunk, in order.
async fn send<T, C, F>(
    chunk: Vec<Pending<T>>,
    call: &mut C,
    out: &mut impl Write,
    summary: &mut Summary,
) -> anyhow::Result<()>
where
    C: FnMut(Vec<T>) -> F,
    F: Future<Output = anyhow::Result<Vec<Outcome>>>,
{
    let mut lines = Vec::with_capacity(chunk.len());
    let mut items = Vec::new();
    for (line, parsed) in chunk {
        match parsed {
            Ok(item) => {
                items.push(item);
                lines.push((line, None));
            }
            Err(why) => lines.push((line, Some(why))),
        }
    }
    let sent = items.len();
    let mut results = if items.is_empty() { Vec::new() } else { call(items).await? }.into_iter();
    anyhow::ensure!(results.len() == sent, "the daemon answered {} results for {sent} items", results.len());
    for (line, unparsed) in lines {
        summary.items += 1;
        let (text, failed) = match unparsed {
            Some(why) => {
                let error = pb::ItemError { code: tonic::Code::InvalidArgument as i32, message: why.clone() };
                (print::json_line(&pb::EncryptResult { error: Some(error), ..Default::default() })?, Some(why))
            }
            None => results.next().ok_or_else(|| anyhow::anyhow!("a result is missing"))?,
        };
        if let Some(why) = failed {
            summary.failed.push((line, why));
        }
        writeln!(out, "{text}")?;
    }
    Ok(())
}

fn open_input(path: &Path) -> anyhow::Result<(Box<dyn BufRead>, u64)> {
    if path == Path::new("-") {
        return Ok((Box::new(std::io::stdin().lock()), 0));
    }
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("--in {}: {e}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((Box::new(std::io::BufReader::new(file)), size))
}

fn open_output(path: &Path) -> anyhow::Result<Box<dyn Write>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufWriter::new(std::io::stdout().lock())));
    }
    let file = std::fs::File::create(path).map_err(|e| anyhow::anyhow!("--out {}: {e}", path.display()))?;
    Ok(Box::new(BufWriter::new(file)))
}

fn progress(size: u64) -> ProgressBar {
    let bar = ProgressBar::new(size);
    if let Ok(style) =
        ProgressStyle::with_template("batch [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})")
    {
        bar.set_style(style);
    }
    bar
}
