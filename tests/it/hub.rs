//! Hugging Face Hub sources against a fake Hub on 127.0.0.1 (started by each
//! test, stopped when it is dropped; nothing reaches the network): a recipe
//! naming `hf://` model and dataset downloads them into `HF_HOME` and trains;
//! a second run downloads nothing; offline mode works from the cache and fails
//! clearly without it; bad checksums, missing files and unreachable Hubs are
//! clear errors; interrupted downloads resume; `huggingface_hub` shares the cache.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use polars::prelude::*;
use runner::hub::{Hub, HubEnv, HubUri};
use sha2::{Digest, Sha256};

use crate::common::{assert_error, free_port, root, runner_with as runner, stderr, tiny_bert, tiny_recipe};

const MODEL: &str = "test-org/tiny-bert";
const DATASET: &str = "test-org/toy-corpus";
const MODEL_SHA: &str = "1111111111111111111111111111111111111111";
const DATASET_SHA: &str = "2222222222222222222222222222222222222222";

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------
// The fake Hub
// ---------------------------------------------------------------------------

/// One file of a repository, and how the fake Hub serves it.
#[derive(Clone)]
struct File {
    content: Vec<u8>,
    /// LFS: ETag is the sha256; HEAD answers 302 to /cdn/<sha256>.
    lfs: bool,
    /// Serve other bytes (same length) than the ETag promises.
    corrupt: bool,
    /// Listed, but the resolve URL answers 404.
    missing: bool,
}

impl File {
    fn new(content: Vec<u8>, lfs: bool) -> File {
        File { content, lfs, corrupt: false, missing: false }
    }
    fn etag(&self) -> String {
        // Non-LFS files carry a git blob id on the real Hub: 40 hex digits.
        if self.lfs { sha256(&self.content) } else { sha256(&self.content)[..40].to_string() }
    }
    fn served(&self) -> Vec<u8> {
        if self.corrupt { self.content.iter().map(|b| b ^ 0xff).collect() } else { self.content.clone() }
    }
}

#[derive(Clone)]
struct Repo {
    /// `models` or `datasets`
    kind: &'static str,
    id: &'static str,
    sha: &'static str,
    files: BTreeMap<String, File>,
}

/// A request as the fake Hub saw it.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    range: Option<String>,
    auth: Option<String>,
    /// Body bytes sent back.
    sent: usize,
}

impl Req {
    /// A request for file contents (not the listing API, not a HEAD).
    fn is_file_download(&self) -> bool {
        self.method == "GET" && !self.path.starts_with("/api/")
    }
}

/// The Hub and its CDN: two listeners on 127.0.0.1 (distinct origins, as on the
/// real Hub, where LFS files redirect to another host), one log.
struct FakeHub {
    addr: SocketAddr,
    cdn: SocketAddr,
    log: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl FakeHub {
    fn start(repos: Vec<Repo>) -> FakeHub {
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
        let (addr, cdn_addr) = (hub.local_addr().unwrap(), cdn.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let repos = Arc::new(repos);
        let threads = [hub, cdn]
            .into_iter()
            .map(|listener| {
                let (log, stop, repos) = (log.clone(), stop.clone(), repos.clone());
                std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        if let Ok(s) = stream {
                            let _ = serve(s, &repos, cdn_addr, &log);
                        }
                    }
                })
            })
            .collect();
        FakeHub { addr, cdn: cdn_addr, log, stop, threads }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }

    fn downloads(&self) -> usize {
        self.requests().iter().filter(|r| r.is_file_download()).count()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for a in [self.addr, self.cdn] {
            let _ = TcpStream::connect(a); // wakes the accept loop
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

type Answer = (&'static str, Vec<(String, String)>, Vec<u8>);

fn h(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

fn not_found(code: &str) -> Answer {
    ("404 Not Found", vec![h("X-Error-Code", code)], b"{}".to_vec())
}

/// Serves one request (HTTP/1.1, one per connection). The request is logged
/// before the answer is sent, so a client that has its answer finds it logged.
fn serve(mut s: TcpStream, repos: &[Repo], cdn: SocketAddr, log: &Mutex<Vec<Req>>) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let (mut range, mut auth) = (None, None);
    loop {
        let mut hl = String::new();
        if reader.read_line(&mut hl)? == 0 || hl.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = hl.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    if method.is_empty() {
        return Ok(()); // the wake-up connection
    }
    let head = method == "HEAD";
    let (status, mut headers, body) = route(repos, cdn, &path, range.as_deref());
    headers.push(h("Content-Length", body.len().to_string()));
    headers.push(h("Connection", "close"));
    log.lock().unwrap().push(Req { method, path, range, auth, sent: if head { 0 } else { body.len() } });
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in &headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    s.write_all(out.as_bytes())?;
    if !head {
        s.write_all(&body)?;
    }
    s.flush()?;
    s.shutdown(std::net::Shutdown::Write)
}

/// The Hub's URL layout: the listing API, resolve URLs (LFS files redirect to
/// the CDN), and the CDN with Range.
fn route(repos: &[Repo], cdn: SocketAddr, path: &str, range: Option<&str>) -> Answer {
    let find = |kind: &str, id: &str| repos.iter().find(|r| r.kind == kind && r.id == id);
    let known_rev = |r: &Repo, rev: &str| rev == "main" || rev == r.sha;
    if let Some(rest) = path.strip_prefix("/api/") {
        // /api/{models|datasets}/{org}/{name}/revision/{rev}
        let p: Vec<&str> = rest.split('/').collect();
        if p.len() != 5 || p[3] != "revision" {
            return ("404 Not Found", vec![], vec![]);
        }
        return match find(p[0], &p[1..3].join("/")) {
            None => not_found("RepoNotFound"),
            Some(r) if !known_rev(r, p[4]) => not_found("RevisionNotFound"),
            Some(r) => {
                let siblings: Vec<serde_json::Value> = r.files.keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
                let body = serde_json::json!({ "id": r.id, "sha": r.sha, "siblings": siblings }).to_string();
                ("200 OK", vec![h("Content-Type", "application/json")], body.into_bytes())
            }
        };
    }
    if let Some(etag) = path.strip_prefix("/cdn/") {
        let Some(f) = repos.iter().flat_map(|r| r.files.values()).find(|f| f.lfs && f.etag() == etag) else {
            return ("404 Not Found", vec![], vec![]);
        };
        let body = f.served();
        let from = range.and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
        return match from {
            Some(n) if n >= body.len() => ("416 Range Not Satisfiable", vec![], vec![]),
            Some(n) => {
                let cr = h("Content-Range", format!("bytes {n}-{}/{}", body.len() - 1, body.len()));
                ("206 Partial Content", vec![cr], body[n..].to_vec())
            }
            None => ("200 OK", vec![], body),
        };
    }
    // /[datasets/]{org}/{name}/resolve/{rev}/{file}
    let Some((prefix, rest)) = path.split_once("/resolve/") else {
        return ("404 Not Found", vec![], vec![]);
    };
    let (kind, id) = match prefix.strip_prefix("/datasets/") {
        Some(id) => ("datasets", id),
        None => ("models", &prefix[1..]),
    };
    let (rev, file) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(r) = find(kind, id) else { return not_found("RepoNotFound") };
    if !known_rev(r, rev) {
        return not_found("RevisionNotFound");
    }
    match r.files.get(file).filter(|f| !f.missing) {
        None => not_found("EntryNotFound"),
        Some(f) if f.lfs => {
            let headers = vec![
                h("X-Repo-Commit", r.sha),
                h("X-Linked-Etag", format!("\"{}\"", f.etag())),
                h("X-Linked-Size", f.content.len().to_string()),
                h("ETag", "\"0000000000000000000000000000000000000000\""),
                h("Location", format!("http://{cdn}/cdn/{}", f.etag())),
            ];
            ("302 Found", headers, vec![])
        }
        Some(f) => ("200 OK", vec![h("X-Repo-Commit", r.sha), h("ETag", format!("\"{}\"", f.etag()))], f.served()),
    }
}

// ---------------------------------------------------------------------------
// Repositories: the tiny BERT fixture, and the toy corpus as parquet
// ---------------------------------------------------------------------------

fn model_repo() -> Repo {
    let dir = tiny_bert();
    let mut files = BTreeMap::new();
    for (f, lfs) in [("config.json", false), ("model.safetensors", true), ("tokenizer.json", false), ("vocab.txt", false)] {
        files.insert(f.to_string(), File::new(std::fs::read(dir.join(f)).unwrap(), lfs));
    }
    files.insert("README.md".into(), File::new(b"# tiny".to_vec(), false));
    Repo { kind: "models", id: MODEL, sha: MODEL_SHA, files }
}

/// Parquet bytes of `lines` in a `text` column (with another column beside it).
fn parquet_bytes(lines: &[&str], dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    let mut df = DataFrame::new(vec![
        Column::new("text".into(), lines.to_vec()),
        Column::new("n".into(), (0..lines.len() as i64).collect::<Vec<_>>()),
    ])
    .unwrap();
    ParquetWriter::new(std::fs::File::create(&path).unwrap()).finish(&mut df).unwrap();
    std::fs::read(&path).unwrap()
}

/// The toy corpus split 80/20 into `cfg/train-*.parquet` and `cfg/validation-*.parquet`,
/// plus a `test` split that no recipe asks for.
fn dataset_repo(tmp: &Path) -> Repo {
    let text = std::fs::read_to_string(root().join("tests/fixtures/toy-corpus.txt")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines.len() * 4 / 5;
    let mut files = BTreeMap::new();
    for (split, part) in [("train", &lines[..cut]), ("validation", &lines[cut..]), ("test", &lines[cut..])] {
        let name = format!("{split}-00000-of-00001.parquet");
        files.insert(format!("toy/{name}"), File::new(parquet_bytes(part, tmp, &name), true));
    }
    files.insert("README.md".into(), File::new(b"# toy".to_vec(), false));
    Repo { kind: "datasets", id: DATASET, sha: DATASET_SHA, files }
}

fn env(hub: &FakeHub, home: &Path) -> HubEnv {
    HubEnv { cache: home.join("hub"), endpoint: hub.endpoint(), token: None, offline: false }
}

// ---------------------------------------------------------------------------
// The runner binary
// ---------------------------------------------------------------------------

/// The tiny recipe, reading model and data from the fake Hub.
fn hub_recipe(dir: &Path) -> PathBuf {
    tiny_recipe(dir, "hub.yaml", |text| {
        let text = text
            .replace(
                "  train: tests/fixtures/toy-corpus.txt\n  holdout: 0.2\n",
                &format!("  dataset: parquet\n  options: {{text_column: text, documents: blank_line}}\n  train: hf://datasets/{DATASET}/toy/train\n  eval: hf://datasets/{DATASET}/toy/validation\n"),
            )
            .replace("checkpoint: tests/fixtures/tiny-bert", &format!("checkpoint: hf://{MODEL}"))
            .replace("max_steps: 30", "max_steps: 6")
            .replace("every: 10", "every: 3");
        assert!(text.contains("hf://datasets") && text.contains(&format!("hf://{MODEL}")), "the recipe was edited:\n{text}");
        text
    })
}


// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn hf_recipe_downloads_trains_then_reuses_the_cache_and_works_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![model_repo(), dataset_repo(tmp.path())]);
    let home = tmp.path().join("hf-home");
    let recipe = hub_recipe(tmp.path());
    let (recipe, home_s, out) = (recipe.to_str().unwrap(), home.to_str().unwrap(), tmp.path().join("results"));
    let out_dir = format!("run.output_dir={}", out.display());
    let endpoint = hub.endpoint();
    let online = [("HF_ENDPOINT", endpoint.as_str()), ("HF_HOME", home_s), ("HF_TOKEN", "hf_secret")];

    // validate downloads nothing, online or not.
    let v = runner(&["validate", recipe], &online);
    assert!(v.status.success(), "{}", stderr(&v));
    assert!(hub.requests().is_empty(), "validate made requests: {:?}", hub.requests());

    // First run: lists both repositories, downloads what the recipe needs, trains.
    let o = runner(&["run", recipe, "--set", &out_dir, "--set", "run.name=first"], &online);
    assert!(o.status.success(), "run failed:\n{}", stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("first/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 6);
    assert!(summary["final_eval_loss"].as_f64().unwrap().is_finite());
    let first = hub.requests();
    let got: Vec<&str> = first.iter().filter(|r| r.is_file_download()).map(|r| r.path.as_str()).collect();
    // config, tokenizer, vocab (direct) + model and 2 parquet files (CDN); not README.md, not the test split.
    assert_eq!(got.len(), 6, "{got:?}");
    assert!(got.iter().all(|p| !p.contains("README") && !p.contains("test-0")), "{got:?}");
    for r in &first {
        let expected = if r.path.starts_with("/cdn/") { None } else { Some("Bearer hf_secret") };
        assert_eq!(r.auth.as_deref(), expected, "HF_TOKEN goes to the Hub, not to the CDN: {r:?}");
    }

    // The cache has huggingface_hub's layout.
    let repo = home.join("hub/models--test-org--tiny-bert");
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), MODEL_SHA);
    let weights = repo.join(format!("snapshots/{MODEL_SHA}/model.safetensors"));
    let blob = std::fs::read_link(&weights).unwrap();
    let expected = sha256(&std::fs::read(tiny_bert().join("model.safetensors")).unwrap());
    assert_eq!(blob, PathBuf::from(format!("../../blobs/{expected}")));
    assert_eq!(sha256(&std::fs::read(&weights).unwrap()), expected);
    let data = home.join(format!("hub/datasets--test-org--toy-corpus/snapshots/{DATASET_SHA}/toy"));
    assert!(data.join("train-00000-of-00001.parquet").is_file() && !data.join("test-00000-of-00001.parquet").exists());
    // The checkpoint written by the run carries the downloaded tokenizer.
    assert!(out.join("first/checkpoint/tokenizer.json").is_file());

    // Second run: the listing only, no file downloaded again.
    let o = runner(&["run", recipe, "--set", &out_dir, "--set", "run.name=second"], &online);
    assert!(o.status.success(), "{}", stderr(&o));
    let second: Vec<Req> = hub.requests()[first.len()..].to_vec();
    assert!(!second.is_empty() && second.iter().all(|r| r.path.starts_with("/api/")), "{second:?}");

    // Offline: no request at all, the same training.
    let before = hub.requests().len();
    let offline = [("HF_ENDPOINT", endpoint.as_str()), ("HF_HOME", home_s), ("HF_HUB_OFFLINE", "1")];
    let o = runner(&["run", recipe, "--set", &out_dir, "--set", "run.name=offline"], &offline);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(hub.requests().len(), before, "offline runs make no request");
    let v = runner(&["validate", recipe], &offline);
    assert!(v.status.success(), "{}", stderr(&v));
    // HF_HUB_CACHE names the cache itself and wins over HF_HOME.
    let cache = home.join("hub");
    let elsewhere = tmp.path().join("elsewhere");
    let by_cache = [("HF_HOME", elsewhere.to_str().unwrap()), ("HF_HUB_CACHE", cache.to_str().unwrap()), ("HF_HUB_OFFLINE", "1")];
    let v = runner(&["validate", recipe], &by_cache);
    assert!(v.status.success(), "{}", stderr(&v));
    let v = runner(&["validate", recipe], &by_cache[..1].iter().chain(&by_cache[2..]).copied().collect::<Vec<_>>());
    assert_error(&v, 2, &["HF_HUB_OFFLINE", "elsewhere"]);
    let eval_loss = |n: &str| {
        let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(n).join("summary.json")).unwrap()).unwrap();
        s["final_eval_loss"].as_f64().unwrap()
    };
    assert_eq!(eval_loss("first"), eval_loss("offline"), "same data, same seed, same run");
}

#[test]
fn offline_without_the_cache_says_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = hub_recipe(tmp.path());
    let home = tmp.path().join("empty-home");
    let offline = [("HF_HOME", home.to_str().unwrap()), ("HF_HUB_OFFLINE", "1")];
    for cmd in ["validate", "run"] {
        let o = runner(&[cmd, recipe.to_str().unwrap()], &offline);
        assert_error(&o, 2, &["HF_HUB_OFFLINE", "model.checkpoint", MODEL, "revision `main`", "local folder", "data.train", DATASET]);
    }
    assert!(!tmp.path().join("results").exists());
}

#[test]
fn a_bad_checksum_is_an_error_and_nothing_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = model_repo();
    repo.files.get_mut("model.safetensors").unwrap().corrupt = true;
    let hub = FakeHub::start(vec![repo, dataset_repo(tmp.path())]);
    let home = tmp.path().join("home");
    let recipe = hub_recipe(tmp.path());
    let endpoint = hub.endpoint();
    let o = runner(&["run", recipe.to_str().unwrap()], &[("HF_ENDPOINT", &endpoint), ("HF_HOME", home.to_str().unwrap())]);
    assert_error(&o, 1, &["checksum mismatch", "model.safetensors", MODEL, "deleted"]);
    let repo = home.join("hub/models--test-org--tiny-bert");
    let blobs: Vec<String> = std::fs::read_dir(repo.join("blobs")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let expected = sha256(&std::fs::read(tiny_bert().join("model.safetensors")).unwrap());
    assert!(blobs.iter().all(|b| !b.starts_with(&expected)), "no blob nor partial file of the bad download: {blobs:?}");
    assert!(!repo.join(format!("snapshots/{MODEL_SHA}/model.safetensors")).exists());
}

#[test]
fn a_missing_file_names_repository_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = model_repo();
    repo.files.get_mut("config.json").unwrap().missing = true;
    let mut bin_only = model_repo();
    bin_only.id = "test-org/bin-only";
    let w = bin_only.files.remove("model.safetensors").unwrap();
    bin_only.files.insert("pytorch_model.bin".into(), w);
    let hub = FakeHub::start(vec![repo, bin_only, dataset_repo(tmp.path())]);
    let home = tmp.path().join("home");
    let recipe = hub_recipe(tmp.path());
    let (endpoint, home_s) = (hub.endpoint(), home.to_str().unwrap().to_string());
    let envs = [("HF_ENDPOINT", endpoint.as_str()), ("HF_HOME", home_s.as_str())];
    let o = runner(&["run", recipe.to_str().unwrap()], &envs);
    assert_error(&o, 2, &["model.checkpoint", MODEL, "no file `config.json`", "HTTP 404"]);

    let o = runner(&["run", recipe.to_str().unwrap(), "--set", "model.checkpoint=hf://test-org/bin-only"], &envs);
    assert_error(&o, 2, &["test-org/bin-only", "pytorch_model.bin", "only model.safetensors is supported"]);
    let o = runner(&["run", recipe.to_str().unwrap(), "--set", "model.checkpoint=hf://test-org/nope"], &envs);
    assert_error(&o, 2, &["model test-org/nope not found"]);
    let o = runner(&["run", recipe.to_str().unwrap(), "--set", &format!("model.checkpoint=hf://{MODEL}@v9")], &envs);
    assert_error(&o, 2, &["has no revision `v9`"]);

    // A split the dataset does not have: the message lists what there is.
    let h = Hub::new(env(&hub, &home));
    let e = h.dataset(&HubUri::parse(&format!("hf://datasets/{DATASET}/toy/dev")).unwrap()).unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("no parquet files for `toy/dev`") && e.contains("toy/validation-00000-of-00001.parquet"), "{e}");
}

#[test]
fn an_unreachable_hub_is_a_clear_error_unless_the_cache_has_it() {
    let tmp = tempfile::tempdir().unwrap();
    // A port that nothing listens on.
    let closed = format!("127.0.0.1:{}", free_port());
    let recipe = hub_recipe(tmp.path());
    let home = tmp.path().join("home");
    let endpoint = format!("http://{closed}");
    let o = runner(&["run", recipe.to_str().unwrap()], &[("HF_ENDPOINT", &endpoint), ("HF_HOME", home.to_str().unwrap())]);
    assert_error(&o, 1, &["model.checkpoint", "cannot reach the Hub", &endpoint, "not cached either"]);

    // Once cached, the same failure falls back to the cache.
    let hub = FakeHub::start(vec![model_repo()]);
    let uri = HubUri::parse(&format!("hf://{MODEL}")).unwrap();
    let cached = Hub::new(env(&hub, &home)).model(&uri).unwrap();
    drop(hub);
    let down = HubEnv { cache: home.join("hub"), endpoint, token: None, offline: false };
    assert_eq!(Hub::new(down).model(&uri).unwrap(), cached);
}

#[test]
fn an_interrupted_download_resumes_with_range() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![model_repo()]);
    let home = tmp.path().join("home");
    let weights = std::fs::read(tiny_bert().join("model.safetensors")).unwrap();
    let etag = sha256(&weights);
    let blobs = home.join("hub/models--test-org--tiny-bert/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let half = weights.len() / 2;
    std::fs::write(blobs.join(format!("{etag}.incomplete")), &weights[..half]).unwrap();

    let snapshot = Hub::new(env(&hub, &home)).model(&HubUri::parse(&format!("hf://{MODEL}")).unwrap()).unwrap();
    assert_eq!(std::fs::read(snapshot.join("model.safetensors")).unwrap(), weights);
    let cdn: Vec<Req> = hub.requests().into_iter().filter(|r| r.path.starts_with("/cdn/")).collect();
    assert_eq!(cdn.len(), 1, "{cdn:?}");
    assert_eq!(cdn[0].range.as_deref(), Some(format!("bytes={half}-").as_str()));
    assert_eq!(cdn[0].sent, weights.len() - half, "only the missing half is sent");
    assert!(!blobs.join(format!("{etag}.incomplete")).exists());
}

#[test]
fn huggingface_hub_and_runner_share_the_cache() {
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "{} (scripts/setup.sh makes it)", python.display());
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![model_repo(), dataset_repo(tmp.path())]);
    let home = tmp.path().join("home");
    let cache = home.join("hub");
    let py = |code: &str, offline: bool| {
        let mut c = Command::new(&python);
        c.arg("-c").arg(code).env("HF_ENDPOINT", hub.endpoint()).env("HF_HUB_DISABLE_TELEMETRY", "1");
        c.env_remove("HF_HOME").env_remove("HF_HUB_CACHE").env_remove("HF_TOKEN");
        if offline {
            c.env("HF_HUB_OFFLINE", "1");
        } else {
            c.env_remove("HF_HUB_OFFLINE");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "python failed:\n{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };

    // What runner cached, huggingface_hub finds offline.
    let dataset = HubUri::parse(&format!("hf://datasets/{DATASET}/toy/train")).unwrap();
    let ours = Hub::new(env(&hub, &home)).dataset(&dataset).unwrap();
    let found = py(
        &format!(
            "from huggingface_hub import hf_hub_download as d; print(d('{DATASET}', 'toy/train-00000-of-00001.parquet', repo_type='dataset', cache_dir='{}'))",
            cache.display()
        ),
        true,
    );
    assert_eq!(PathBuf::from(found), ours[0]);

    // What huggingface_hub downloaded from the same Hub, runner finds offline.
    let before = hub.downloads();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        py(&format!("from huggingface_hub import hf_hub_download as d; print(d('{MODEL}', '{f}', cache_dir='{}'))", cache.display()), false);
    }
    assert_eq!(hub.downloads(), before + 3, "huggingface_hub downloaded the model");
    let mut offline = env(&hub, &home);
    offline.offline = true;
    let snapshot = Hub::new(offline).model(&HubUri::parse(&format!("hf://{MODEL}")).unwrap()).unwrap();
    assert_eq!(snapshot, cache.join(format!("models--test-org--tiny-bert/snapshots/{MODEL_SHA}")));
    assert!(snapshot.join("model.safetensors").is_file() && snapshot.join("tokenizer.json").is_file());
}

#[test]
fn the_wikitext_recipe_validates_without_touching_the_network() {
    // Nothing listens there: validate must not try.
    let closed = format!("127.0.0.1:{}", free_port());
    let tmp = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{closed}");
    let envs = [("HF_ENDPOINT", endpoint.as_str()), ("HF_HOME", tmp.path().to_str().unwrap())];
    let o = runner(&["validate", "recipes/wikitext-bert-base.yaml"], &envs);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none(), "validate wrote nothing into the cache");

    // Bad hf:// addresses are recipe problems, all reported together.
    let o = runner(
        &[
            "validate",
            "recipes/wikitext-bert-base.yaml",
            "--set",
            "model.checkpoint=hf://datasets/Salesforce/wikitext",
            "--set",
            "data.train=hf://org/name/extra",
            "--set",
            "data.eval=hf://google-bert/bert-base-uncased",
            "--set",
            "data.dataset=text",
        ],
        &envs,
    );
    assert_error(&o, 2, &["5 problems", "data.options", "unknown field `text_column`", "model.checkpoint", "names a dataset", "data.train", "no path after it", "data.eval", "names a model", "data.dataset: hf:// datasets are read as parquet"]);
}

/// A family fixture served as `id`: its config, weights, tokenizer and tokenizer_config.
fn family_repo(fixture: &str, id: &'static str, sha: &'static str) -> Repo {
    let dir = root().join("tests/fixtures").join(fixture);
    let mut files = BTreeMap::new();
    for (f, lfs) in [("config.json", false), ("model.safetensors", true), ("tokenizer.json", false), ("tokenizer_config.json", false)] {
        files.insert(f.to_string(), File::new(std::fs::read(dir.join(f)).unwrap(), lfs));
    }
    Repo { kind: "models", id, sha, files }
}

/// The shipped RoBERTa, XLM-R and ModernBERT recipes as they are, scaled down
/// by `--set` only: each downloads its checkpoint from the (fake) Hub, gets
/// the family's plugin from `model_type`, its special tokens from the
/// downloaded tokenizer files, and trains.
#[test]
fn the_shipped_family_recipes_run_from_the_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(vec![
        family_repo("tiny-roberta", "FacebookAI/roberta-base", "3333333333333333333333333333333333333333"),
        family_repo("tiny-xlm-roberta", "FacebookAI/xlm-roberta-base", "4444444444444444444444444444444444444444"),
        family_repo("tiny-modernbert", "answerdotai/ModernBERT-base", "5555555555555555555555555555555555555555"),
        dataset_repo(tmp.path()),
    ]);
    let home = tmp.path().join("hf-home");
    let envs = [("HF_ENDPOINT", hub.endpoint()), ("HF_HOME", home.display().to_string()), ("RUST_LOG", "info".to_string())];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = format!("run.output_dir={}", tmp.path().join("results").display());
    let small = [
        out.as_str(),
        "data.max_seq_len=32",
        "training.device=cpu",
        "training.precision=fp32",
        "training.threads=1",
        "training.batch_size=4",
        "training.grad_accum_steps=1",
        "training.epochs=null",
        "training.max_steps=2",
        "eval.every=2",
        "eval.max_sequences=8",
    ];
    let dapt = [
        "data.train=tests/fixtures/toy-corpus.txt",
        "data.options.documents=blank_line",
        "data.options.suffix=null",
        "data.holdout=0.2",
        "training.checkpoint.every=0",
    ];
    let toy = format!("hf://datasets/{DATASET}/toy");
    let (train, eval) = (format!("data.train={toy}/train"), format!("data.eval={toy}/validation"));
    for (recipe, name, plugin, extra) in [
        ("recipes/dapt-roberta-base.yaml", "dapt-roberta-base", "roberta", dapt.to_vec()),
        ("recipes/wikitext-xlm-roberta-base.yaml", "wikitext-xlm-roberta-base", "roberta", vec![train.as_str(), eval.as_str(), "data.options.documents=blank_line"]),
        ("recipes/modernbert-base.yaml", "modernbert-base", "modernbert", dapt.to_vec()),
        ("recipes/modernbert-base-long.yaml", "modernbert-base-long", "modernbert", dapt.to_vec()),
    ] {
        let mut args = vec!["run", recipe];
        for s in small.iter().chain(&extra) {
            args.extend(["--set", s]);
        }
        let o = runner(&args, &envs);
        assert!(o.status.success(), "{recipe}: {}", stderr(&o));
        let run = tmp.path().join("results").join(name);
        assert!(stderr(&o).contains(&format!("model `{plugin}`:")), "{recipe}: the {plugin} plugin from model_type:\n{}", stderr(&o));
        let df = crate::common::read_csv(&run.join("metrics.csv"));
        let loss = crate::common::column(&df, "eval_loss").into_iter().flatten().last().unwrap();
        assert!(loss.is_finite(), "{recipe}: eval loss {loss}");
    }

    // The masking-rate sweep: three training rates, every run scored on the
    // same 15% eval masks, so the evals before the first step agree exactly.
    let mut args = vec!["sweep", "recipes/sweeps/modernbert-mask-rate.yaml.j2"];
    for s in small.iter().chain(&dapt) {
        args.extend(["--set", s]);
    }
    let o = runner(&args, &envs);
    assert!(o.status.success(), "sweep: {}", stderr(&o));
    let first_evals: Vec<f64> = ["rate-0.15", "rate-0.3", "rate-0.4"]
        .iter()
        .map(|run| {
            let df = crate::common::read_csv(&tmp.path().join("results/modernbert-mask-rate").join(run).join("metrics.csv"));
            crate::common::column(&df, "eval_loss").into_iter().flatten().next().unwrap()
        })
        .collect();
    assert!(first_evals.windows(2).all(|w| w[0] == w[1]), "step-0 eval losses differ: {first_evals:?}");
}
