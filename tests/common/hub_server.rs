//! A fake Hugging Face Hub for tests: plain HTTP on 127.0.0.1, std only. It answers exactly
//! what hf-hub 0.4.3's blocking `ApiRepo::get` / `download` sends (ureq 2.12.1):
//!
//!   1. metadata: `GET {endpoint}/{repo_url}/resolve/{revision}/{file}` with `Range: bytes=0-0`
//!      (agent with redirects(0); hf-hub itself follows 3xx with a *relative* Location, and for an
//!      *absolute* Location reads X-Repo-Commit/ETag from the 3xx and then GETs the Location with
//!      `Range: bytes=0-0` to read `Content-Range: bytes 0-0/<size>`).
//!   2. body: `GET` of the same resolve URL with `Range: bytes=<start>-` (start = length of an
//!      existing `blobs/<etag>.part`, usually 0); ureq follows up to 4 redirects by itself.
//!
//! `repo_url` is what hf-hub's `Repo::url()` gives: `owner/name` for models,
//! `datasets/owner/name` for datasets. The revision arrives with `/` escaped as `%2F`.
//!
//! Keys of `files`: `"{repo_url}/{path in repo}"`, e.g. `"org/tiny/config.json"` or
//! `"datasets/org/data/en/c4-train.00000-of-01024.json.gz"`. Value: (content, commit sha).
//! A request for a revision is accepted when it is `main` or equals the file's commit.
//!
//! Every response carries `Content-Length` and `Connection: close` (one request per
//! connection, so ureq never pools; a body cut short then reads as an error, not as EOF).
//! Set HF_ENDPOINT to `server.endpoint` (`http://127.0.0.1:PORT`, no trailing slash).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// How the fake hub misbehaves (all off by default).
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Repo urls (`owner/name` / `datasets/owner/name`) that need `Authorization: Bearer <token>`:
    /// no Authorization -> 401, wrong token -> 403 (the real hub's codes for gated repos).
    pub gated: HashSet<String>,
    /// The token accepted for gated repos.
    pub token: String,
    /// Once per server: the first body longer than N bytes is cut after N bytes (headers still
    /// announce the full Content-Length), then the socket is shut down.
    pub cut_after: Option<usize>,
    /// Send `X-Linked-Etag` (the blob's etag) plus a different `ETag`, as the hub does for LFS files.
    pub linked_etag: bool,
    /// `resolve` answers `302 Found` with an absolute `Location: http://<host>/cdn/<etag>` (the hub
    /// sends LFS files to a CDN this way). `cdn_host` overrides `<host>` (e.g. `localhost:PORT`,
    /// a different host name, to check that ureq drops Authorization across hosts).
    pub redirect_absolute: bool,
    pub cdn_host: Option<String>,
    /// Renamed repos: old repo url -> new repo url. `resolve` on the old one answers
    /// `307` with a relative `Location: /{new}/resolve/{rev}/{file}` (like the hub).
    pub renamed: HashMap<String, String>,
    /// Answer every resolve with 500.
    pub fail_500: bool,
    /// Branch names accepted as revisions besides `main` (e.g. `refs/convert/parquet`).
    pub branches: Vec<String>,
}

/// One request as received (for assertions: count, Range, Authorization, ...).
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    /// Raw request target, e.g. `/org/tiny/resolve/main/config.json`.
    pub target: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
}

impl Logged {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Server {
    pub port: u16,
    /// `http://127.0.0.1:PORT` — exactly what HF_ENDPOINT should be (no trailing slash:
    /// hf-hub formats `{endpoint}/{repo}/resolve/...`).
    pub endpoint: String,
    pub log: Arc<Mutex<Vec<Logged>>>,
}

impl Server {
    /// The dlpx binary talking to this server only: `HF_ENDPOINT` here, a fresh Hugging Face
    /// cache at `hf_home` (the dlpx cache inside it), no token, not offline, and no proxy
    /// variables (hf-hub's agent reads them and ignores NO_PROXY).
    pub fn dlpx(&self, hf_home: &std::path::Path) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"));
        c.env("HF_ENDPOINT", &self.endpoint)
            .env("HF_HOME", hf_home)
            .env("DLPX_CACHE", hf_home.join("dlpx"))
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE");
        for v in [
            "ALL_PROXY",
            "all_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
        ] {
            c.env_remove(v);
        }
        c
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

struct State {
    files: HashMap<String, (Vec<u8>, String)>,
    behaviour: Behaviour,
    cut_done: AtomicBool,
    log: Arc<Mutex<Vec<Logged>>>,
}

/// Starts the server on an ephemeral port; the accept thread lives until the process exits.
pub fn serve(files: HashMap<String, (Vec<u8>, String)>, behaviour: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let state = Arc::new(State {
        files,
        behaviour,
        cut_done: AtomicBool::new(false),
        log: log.clone(),
    });
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let state = state.clone();
            thread::spawn(move || {
                let _ = handle(stream, &state);
            });
        }
    });
    Server {
        port,
        endpoint: format!("http://127.0.0.1:{port}"),
        log,
    }
}

/// The etag the fake hub gives a content (the blob file name in the cache): 40 hex digits,
/// no dot (hf-hub does `blob_path.set_extension("part"/"lock")`, a dot in an etag would break it).
pub fn etag_of(content: &[u8]) -> String {
    let fnv = |seed: u64| {
        content
            .iter()
            .fold(seed, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
    };
    format!(
        "{:016x}{:016x}{:08x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x8422_2325_cbf2_9ce4),
        content.len() as u32
    )
}

fn handle(mut stream: TcpStream, st: &State) -> std::io::Result<()> {
    // Read the request head fully (GETs carry no body). Reading everything before answering
    // matters: closing a socket with unread input makes the kernel send RST instead of FIN.
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let req = Logged {
        method,
        target,
        headers,
    };
    st.log.lock().unwrap().push(req.clone());
    let resp = route(&req, st);
    write_response(&mut stream, &req, resp, st)
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Only a real file body may be cut by `cut_after`.
    cuttable: bool,
}

fn error(status: u16, code: &str, msg: &str) -> Resp {
    Resp {
        status,
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("X-Error-Code".into(), code.into()),
            ("X-Error-Message".into(), msg.into()),
        ],
        body: format!("{{\"error\":\"{msg}\"}}").into_bytes(),
        cuttable: false,
    }
}

fn route(req: &Logged, st: &State) -> Resp {
    if req.method != "GET" && req.method != "HEAD" {
        return error(405, "MethodNotAllowed", "only GET and HEAD");
    }
    let path = req.target.split('?').next().unwrap_or("");
    // CDN leg of an absolute redirect: /cdn/<etag>
    if let Some(etag) = path.strip_prefix("/cdn/") {
        return match st.files.values().find(|(c, _)| etag_of(c) == etag) {
            Some((content, _)) => ranged(req, content, vec![]),
            None => error(404, "NoSuchKey", "no such blob"),
        };
    }
    // /{repo_url}/resolve/{revision}/{file}
    let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return error(
            404,
            "NotFound",
            "not a resolve url (hf-hub 0.4 get only uses resolve)",
        );
    };
    let Some((rev, file)) = rest.split_once('/') else {
        return error(400, "BadRequest", "no file");
    };
    let (repo, rev, file) = (pct_decode(repo), pct_decode(rev), pct_decode(file));
    if st.behaviour.fail_500 {
        return error(500, "InternalError", "internal error");
    }
    if let Some(new) = st.behaviour.renamed.get(&repo) {
        let mut r = error(307, "", "");
        r.headers = vec![(
            "Location".into(),
            format!("/{new}/resolve/{}/{file}", rev.replace('/', "%2F")),
        )];
        r.body = Vec::new();
        return r;
    }
    let prefix = format!("{repo}/");
    if !st.files.keys().any(|k| k.starts_with(&prefix)) {
        // NB: the real hub answers 401 (RepositoryNotFound) here for anonymous callers.
        return error(404, "RepoNotFound", "Repository not found");
    }
    if st.behaviour.gated.contains(&repo) {
        match req.header("authorization") {
            None => {
                return error(
                    401,
                    "GatedRepo",
                    "Access to this repo is restricted. You must be authenticated",
                )
            }
            Some(a) if a != format!("Bearer {}", st.behaviour.token) => {
                return error(
                    403,
                    "GatedRepo",
                    "Access to this repo is restricted and you are not in the authorized list",
                )
            }
            Some(_) => {}
        }
    }
    let Some((content, commit)) = st.files.get(&format!("{repo}/{file}")) else {
        return error(404, "EntryNotFound", "Entry not found");
    };
    let branch = st
        .behaviour
        .branches
        .iter()
        .any(|b| *b == rev || b.replace('/', "%2F") == rev);
    if rev != "main" && rev != *commit && !branch {
        return error(404, "RevisionNotFound", "Invalid rev id");
    }
    let etag = etag_of(content);
    let mut meta = vec![("X-Repo-Commit".to_string(), commit.clone())];
    if st.behaviour.linked_etag {
        meta.push(("X-Linked-Etag".into(), format!("\"{etag}\"")));
        meta.push(("X-Linked-Size".into(), content.len().to_string()));
        meta.push((
            "ETag".into(),
            format!("\"{}\"", etag.chars().rev().collect::<String>()),
        ));
    } else {
        meta.push(("ETag".into(), format!("\"{etag}\"")));
    }
    if st.behaviour.redirect_absolute {
        let host = st
            .behaviour
            .cdn_host
            .clone()
            .or_else(|| req.header("host").map(str::to_string))
            .unwrap_or_default();
        meta.push(("Location".into(), format!("http://{host}/cdn/{etag}")));
        return Resp {
            status: 302,
            headers: meta,
            body: Vec::new(),
            cuttable: false,
        };
    }
    ranged(req, content, meta)
}

/// 200 (no Range), 206 + Content-Range (single `bytes=a-b`, `bytes=a-`, `bytes=-n`), or 416.
fn ranged(req: &Logged, content: &[u8], mut headers: Vec<(String, String)>) -> Resp {
    let total = content.len();
    headers.push(("Accept-Ranges".into(), "bytes".into()));
    headers.push(("Content-Type".into(), "application/octet-stream".into()));
    let range = req
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .map(str::to_string);
    let Some(range) = range else {
        return Resp {
            status: 200,
            headers,
            body: content.to_vec(),
            cuttable: true,
        };
    };
    if total == 0 {
        // hf-hub 0.4 needs a 2xx with Content-Range `.../0` to download an empty file (a strict
        // server would say 416, which hf-hub turns into an error).
        headers.push(("Content-Range".into(), "bytes */0".into()));
        return Resp {
            status: 200,
            headers,
            body: Vec::new(),
            cuttable: false,
        };
    }
    let (a, b) = range.split_once('-').unwrap_or((range.as_str(), ""));
    let (start, end) = match (
        a.trim().parse::<usize>().ok(),
        b.trim().parse::<usize>().ok(),
    ) {
        (Some(s), Some(e)) => (s, e.min(total - 1)),
        (Some(s), None) => (s, total - 1),
        (None, Some(n)) => (total.saturating_sub(n), total - 1),
        (None, None) => (total, 0),
    };
    if start >= total || start > end {
        let mut r = error(
            416,
            "RangeNotSatisfiable",
            "Requested Range Not Satisfiable",
        );
        r.headers
            .push(("Content-Range".into(), format!("bytes */{total}")));
        return r;
    }
    headers.push((
        "Content-Range".into(),
        format!("bytes {start}-{end}/{total}"),
    ));
    Resp {
        status: 206,
        headers,
        body: content[start..=end].to_vec(),
        cuttable: true,
    }
}

fn write_response(
    stream: &mut TcpStream,
    req: &Logged,
    r: Resp,
    st: &State,
) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        _ => "Internal Server Error",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", r.status);
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        r.body.len()
    ));
    stream.write_all(head.as_bytes())?;
    if req.method == "HEAD" {
        return stream.flush();
    }
    let cut = match st.behaviour.cut_after {
        Some(n) if r.cuttable && r.body.len() > n && !st.cut_done.swap(true, Ordering::SeqCst) => {
            Some(n)
        }
        _ => None,
    };
    match cut {
        Some(n) => {
            stream.write_all(&r.body[..n])?;
            stream.flush()?;
            // FIN mid-body: ureq's Content-Length reader fails with UnexpectedEof
            // "response body closed before all bytes were read".
            stream.shutdown(Shutdown::Both)
        }
        None => {
            stream.write_all(&r.body)?;
            stream.flush()
        }
    }
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
